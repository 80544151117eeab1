//! `AdamW` whose state can be saved and restored, so that a killed run
//! resumes where it stopped instead of restarting its moments at zero.
//!
//! candle-nn's `AdamW` keeps its moments private. This one takes named
//! variables and does the same arithmetic, operation for operation
//! (Loshchilov & Hutter's decoupled weight decay, bias-corrected moments),
//! so runs before and after the switch train alike; `state` and `restore`
//! carry the moments and the step count through a checkpoint.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, backprop::GradStore};
use candle_nn::ParamsAdamW;

/// One trained variable and its two moments.
struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
}

/// `AdamW` over named variables, with a state to checkpoint.
pub struct AdamW {
    slots: Vec<Slot>,
    step_t: usize,
    params: ParamsAdamW,
}

impl AdamW {
    /// The optimiser of `vars` (names must be unique; non-float variables
    /// are left out, as candle-nn's does).
    ///
    /// # Errors
    /// A moment tensor could not be allocated.
    pub fn new(vars: Vec<(String, Var)>, params: ParamsAdamW) -> candle_core::Result<Self> {
        let slots = vars
            .into_iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(name, var)| {
                let m = Var::zeros(var.shape(), var.dtype(), var.device())?;
                let v = Var::zeros(var.shape(), var.dtype(), var.device())?;
                Ok(Slot { name, var, m, v })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            step_t: 0,
            params,
        })
    }

    /// Steps taken so far.
    #[must_use]
    pub fn steps(&self) -> usize {
        self.step_t
    }

    /// Sets the learning rate of the next steps.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// One update from `grads`; variables without a gradient are left as
    /// they are.
    ///
    /// # Errors
    /// A tensor operation failed.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let lr = p.lr;
        let decay = 1f64 - lr * p.weight_decay;
        let scale_m = 1f64 / (1f64 - p.beta1.powi(self.step_t as i32));
        let scale_v = 1f64 / (1f64 - p.beta2.powi(self.step_t as i32));
        for s in &self.slots {
            let Some(g) = grads.get(&s.var) else {
                continue;
            };
            let m = ((s.m.as_tensor() * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((s.v.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&m * scale_m)?;
            let v_hat = (&v * scale_v)?;
            let theta = (s.var.as_tensor() * decay)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let theta = (theta - (update * lr)?)?;
            s.m.set(&m)?;
            s.v.set(&v)?;
            s.var.set(&theta)?;
        }
        Ok(())
    }

    /// The state under `prefix`: each variable's value and moments
    /// (`PREFIX.NAME.value`, `.m`, `.v`) and the step count
    /// (`PREFIX.step`, one u32).
    ///
    /// # Errors
    /// A tensor could not be read.
    pub fn state(&self, prefix: &str) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut all = HashMap::new();
        for s in &self.slots {
            for (part, t) in [("value", &s.var), ("m", &s.m), ("v", &s.v)] {
                all.insert(
                    format!("{prefix}.{}.{part}", s.name),
                    t.as_tensor().detach().to_device(&Device::Cpu)?,
                );
            }
        }
        let step = u32::try_from(self.step_t).unwrap_or(u32::MAX);
        all.insert(
            format!("{prefix}.step"),
            Tensor::new(&[step], &Device::Cpu)?,
        );
        Ok(all)
    }

    /// Restores what [`Self::state`] saved under `prefix` — the variables'
    /// values too — checking that every variable is there with its shape.
    ///
    /// # Errors
    /// A description of what is missing or does not match.
    pub fn restore(&mut self, saved: &HashMap<String, Tensor>, prefix: &str) -> Result<(), String> {
        let get = |key: String, like: &Var| -> Result<Tensor, String> {
            let t = saved.get(&key).ok_or_else(|| format!("no tensor {key}"))?;
            if t.dims() != like.dims() {
                return Err(format!(
                    "{key}: shape {:?}, expected {:?}",
                    t.dims(),
                    like.dims()
                ));
            }
            t.to_dtype(like.dtype())
                .and_then(|t| t.to_device(like.device()))
                .map_err(|e| format!("{key}: {e}"))
        };
        // Everything is read and checked before anything is set.
        let mut values = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            values.push([
                get(format!("{prefix}.{}.value", s.name), &s.var)?,
                get(format!("{prefix}.{}.m", s.name), &s.m)?,
                get(format!("{prefix}.{}.v", s.name), &s.v)?,
            ]);
        }
        let step_key = format!("{prefix}.step");
        let step = saved
            .get(&step_key)
            .filter(|t| t.dtype() == DType::U32 && t.elem_count() == 1)
            .and_then(|t| t.flatten_all().ok()?.to_vec1::<u32>().ok())
            .ok_or_else(|| format!("no step count {step_key}"))?;
        for (s, [value, m, v]) in self.slots.iter().zip(values) {
            for (var, t) in [(&s.var, value), (&s.m, m), (&s.v, v)] {
                var.set(&t)
                    .map_err(|e| format!("{prefix}.{}: {e}", s.name))?;
            }
        }
        self.step_t = step[0] as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    fn quadratic_grads(x: &Var) -> GradStore {
        // d/dx of sum((x - 3)^2)
        let loss = (x.as_tensor() - 3.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        loss.backward().unwrap()
    }

    fn params() -> ParamsAdamW {
        ParamsAdamW {
            lr: 0.1,
            weight_decay: 0.01,
            ..ParamsAdamW::default()
        }
    }

    /// The same arithmetic as candle-nn's `AdamW`: bit-identical values
    /// after several steps.
    #[test]
    fn matches_candle_nn_adamw_exactly() {
        let init = Tensor::new(&[0.5f32, -1.25, 2.0, 7.0], &Device::Cpu).unwrap();
        let a = Var::from_tensor(&init).unwrap();
        let b = Var::from_tensor(&init).unwrap();
        let mut ours = AdamW::new(vec![("x".into(), a.clone())], params()).unwrap();
        let mut theirs = candle_nn::AdamW::new(vec![b.clone()], params()).unwrap();
        for k in 0..7 {
            let lr = 0.1 / f64::from(k + 1);
            ours.set_learning_rate(lr);
            theirs.set_learning_rate(lr);
            ours.step(&quadratic_grads(&a)).unwrap();
            theirs.step(&quadratic_grads(&b)).unwrap();
        }
        let (x, y) = (
            a.as_tensor().to_vec1::<f32>().unwrap(),
            b.as_tensor().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(x, y);
        assert_ne!(x, init.to_vec1::<f32>().unwrap());
    }

    /// Stopped after 3 steps and restored into a fresh optimiser over
    /// other variables, 3 more steps land exactly where 6 uninterrupted
    /// ones do.
    #[test]
    fn restored_state_continues_exactly() {
        let init = Tensor::new(&[0.5f32, -1.25, 2.0], &Device::Cpu).unwrap();
        let whole = Var::from_tensor(&init).unwrap();
        let mut a = AdamW::new(vec![("x".into(), whole.clone())], params()).unwrap();
        for _ in 0..6 {
            a.step(&quadratic_grads(&whole)).unwrap();
        }
        let first = Var::from_tensor(&init).unwrap();
        let mut b = AdamW::new(vec![("x".into(), first.clone())], params()).unwrap();
        for _ in 0..3 {
            b.step(&quadratic_grads(&first)).unwrap();
        }
        let saved = b.state("new").unwrap();
        let second = Var::from_tensor(&init).unwrap();
        let mut c = AdamW::new(vec![("x".into(), second.clone())], params()).unwrap();
        c.restore(&saved, "new").unwrap();
        assert_eq!(c.steps(), 3);
        for _ in 0..3 {
            c.step(&quadratic_grads(&second)).unwrap();
        }
        assert_eq!(
            whole.as_tensor().to_vec1::<f32>().unwrap(),
            second.as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn restore_names_what_is_missing_or_wrong_and_changes_nothing() {
        let x = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], params()).unwrap();
        let mut saved = opt.state("new").unwrap();
        let err = opt.restore(&saved, "other").unwrap_err();
        assert!(err.contains("other.x.value"), "{err}");
        saved.insert(
            "new.x.m".into(),
            Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap(),
        );
        saved.insert(
            "new.x.value".into(),
            Tensor::new(&[9f32, 9.0], &Device::Cpu).unwrap(),
        );
        let err = opt.restore(&saved, "new").unwrap_err();
        assert!(err.contains("new.x.m") && err.contains("shape"), "{err}");
        assert_eq!(x.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        saved.remove("new.step");
        saved.insert(
            "new.x.m".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt.restore(&saved, "new").unwrap_err();
        assert!(err.contains("step"), "{err}");
    }
}
