//! How a long run tells its caller where it is, without the library drawing anything itself.
//!
//! The binary passes a progress bar when stderr is a terminal; tests and batch jobs pass nothing, and the
//! run logs a line per `log_every` steps instead. [`Short`] keeps logged numbers readable.

use std::fmt;

/// Receives a run's progress (a progress bar in the binary).
pub trait Progress: Send + Sync {
    /// A phase of `total` steps starts at `position` (a resumed run starts part-way).
    fn start(&self, _phase: &str, _total: u64, _position: u64) {}
    /// The phase is at `position`; `message` summarises the last steps (loss, throughput).
    fn update(&self, _position: u64, _message: &str) {}
    /// A line for people (an evaluation table), printed without breaking the bar.
    fn println(&self, _line: &str) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// A number printed with four significant digits (log fields, messages): `0.01234`, `12.35`, `1.2e-7`.
#[derive(Debug, Clone, Copy)]
pub struct Short(pub f64);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let a = v.abs();
        if !v.is_finite() || a == 0.0 {
            write!(f, "{v}")
        } else if !(1e-4..1e5).contains(&a) {
            write!(f, "{v:.3e}")
        } else {
            let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
            write!(f, "{v:.decimals$}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Short;

    #[test]
    fn short_numbers_keep_four_significant_digits() {
        assert_eq!(Short(0.012_345_678_9).to_string(), "0.01235");
        assert_eq!(Short(12.345_678).to_string(), "12.35");
        assert_eq!(Short(1234.5678).to_string(), "1235");
        assert_eq!(Short(1.2e-7).to_string(), "1.200e-7");
        assert_eq!(Short(0.0).to_string(), "0");
        assert_eq!(Short(f64::NAN).to_string(), "NaN");
    }
}
