//! Whether this machine can run the CUDA backend, asked of the driver
//! before burn's CUDA runtime starts: without a driver or a device that
//! runtime panics inside its device channel (`RecvError`), so `dtx` checks
//! first and says which of the two is missing.
//!
//! The check loads the driver library (`libcuda.so.1` on Linux,
//! `nvcuda.dll` on Windows) and calls `cuInit(0)` and `cuDeviceGetCount`,
//! the driver API's first two calls. It needs no CUDA toolkit and works in
//! builds without the `cuda` feature too.

/// The driver library's file name on this platform.
const DRIVER: &str = if cfg!(windows) {
    "nvcuda.dll"
} else {
    "libcuda.so.1"
};

/// The number of CUDA devices the driver reports, or why there are none to
/// use (a message that names the library, the call and its error code).
pub fn devices() -> Result<usize, String> {
    devices_with(DRIVER)
}

/// [`devices`] with the driver library `driver` (a test gives a missing one).
pub fn devices_with(driver: &str) -> Result<usize, String> {
    // SAFETY: loading the vendor's driver library runs its initialisers,
    // which is what burn's CUDA runtime does as well; the two symbols are
    // declared with their C signatures from cuda.h (`CUresult` is an int).
    unsafe {
        let lib = libloading::Library::new(driver).map_err(|e| {
            format!(
                "no CUDA driver found: {driver} could not be loaded ({e}); \
                 install the NVIDIA driver or use backend = \"cpu\""
            )
        })?;
        let init: libloading::Symbol<unsafe extern "C" fn(u32) -> i32> = lib
            .get(b"cuInit\0")
            .map_err(|e| format!("{driver} has no cuInit ({e}): not a CUDA driver"))?;
        let count: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| format!("{driver} has no cuDeviceGetCount ({e}): not a CUDA driver"))?;
        match init(0) {
            0 => {}
            // CUDA_ERROR_NO_DEVICE
            100 => return Err(no_device()),
            code => {
                return Err(format!(
                    "the CUDA driver did not start: cuInit returned error {code}{}",
                    hint(code)
                ));
            }
        }
        let mut n = 0i32;
        match count(&mut n) {
            0 if n > 0 => Ok(n as usize),
            0 => Err(no_device()),
            code => Err(format!(
                "cuDeviceGetCount returned CUDA error {code}{}",
                hint(code)
            )),
        }
    }
}

fn no_device() -> String {
    "the CUDA driver found no device (CUDA_ERROR_NO_DEVICE); use backend = \"cpu\"".into()
}

/// The meaning of the driver's commonest start-up errors.
fn hint(code: i32) -> &'static str {
    match code {
        3 => " (CUDA_ERROR_NOT_INITIALIZED)",
        35 => " (CUDA_ERROR_INSUFFICIENT_DRIVER: the driver is older than the runtime)",
        101 => " (CUDA_ERROR_INVALID_DEVICE)",
        304 => " (CUDA_ERROR_OPERATING_SYSTEM)",
        999 => " (CUDA_ERROR_UNKNOWN)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_driver_is_named() {
        let e = devices_with("libcuda-that-does-not-exist.so.1").unwrap_err();
        assert!(e.contains("no CUDA driver found"), "{e}");
        assert!(e.contains("libcuda-that-does-not-exist.so.1"), "{e}");
    }

    #[test]
    fn this_machine_either_has_devices_or_says_why_not() {
        match devices() {
            Ok(n) => assert!(n > 0),
            Err(e) => assert!(e.contains("CUDA"), "{e}"),
        }
    }
}
