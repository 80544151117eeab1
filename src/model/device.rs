//! The compute device, chosen in one place: `--device cpu|cuda[:N]|metal[:N]`.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use super::ModelError;

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// NVIDIA GPU `N` (cargo feature `cuda`).
    Cuda(usize),
    /// Apple GPU `N` (cargo feature `metal`).
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| format!("`{s}`: the device index must be a number"))?;
                (k.to_owned(), i)
            }
            None => (s.clone(), 0),
        };
        match kind.as_str() {
            "cpu" if !s.contains(':') => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(index)),
            "metal" => Ok(Self::Metal(index)),
            _ => Err(format!("`{s}`: expected cpu, cuda, cuda:N or metal")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Whether this build can use the device kind at all.
    #[must_use]
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda(_) => cfg!(feature = "cuda"),
            Self::Metal(_) => cfg!(feature = "metal"),
        }
    }

    /// Opens the device.
    ///
    /// # Errors
    /// [`ModelError::Device`] when the build lacks the backend or the
    /// device cannot be opened.
    pub fn open(self) -> Result<Device, ModelError> {
        let err = |message: String| ModelError::Device {
            spec: self.to_string(),
            message,
        };
        if !self.compiled_in() {
            let feature = if matches!(self, Self::Cuda(_)) {
                "cuda"
            } else {
                "metal"
            };
            return Err(err(format!(
                "this build has no {feature} support; rebuild with `--features {feature}`"
            )));
        }
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => Device::new_cuda(i).map_err(|e| err(e.to_string())),
            Self::Metal(i) => Device::new_metal(i).map_err(|e| err(e.to_string())),
        }
    }
}

/// Keeps freed activation buffers in the process instead of handing them
/// back to the kernel after every tensor operation (glibc only; elsewhere
/// nothing happens). By default glibc serves blocks above a (dynamic)
/// threshold with fresh `mmap`s and trims the heap top eagerly, so the
/// multi-megabyte activations of a forward pass are page-faulted in anew
/// every time: a fifth or more of the CPU time of a ViT-B/16 pass here
/// (measured in `docs/MODEL.md`, "Speed"). Call once, early, before
/// threads allocate.
pub fn tune_host_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets allocator parameters; it is called with
    // valid parameter numbers and values, before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// For training on the CPU: never trims the heap (glibc only; elsewhere
/// nothing happens). A training step's peak — gigabytes of activations and
/// gradients with faceres blocks trained — is freed at the step's end and
/// needed again by the next; above [`tune_host_allocator`]'s 1 GiB trim
/// threshold glibc handed it back to the kernel every step, and the next
/// step page-faulted it in anew (measured in BENCHMARKS.md, "Training on
/// the CPU"). The memory then stays with the process until it exits.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets an allocator parameter (glibc takes the
    // arena lock); -1 is the documented value that turns trimming off.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:1".parse(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("metal".parse(), Ok(DeviceSpec::Metal(0)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        assert!(matches!(DeviceSpec::Cpu.open(), Ok(Device::Cpu)));
        if !cfg!(feature = "cuda") {
            let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
