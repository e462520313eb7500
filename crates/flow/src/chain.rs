use std::error::Error;
use std::fmt;

/// Displays an error and its causes on one line, joined with ": ", for
/// logs (`error = %Chain(&e)`).
///
/// walbust's error messages never repeat their cause (it is chained with
/// `#[source]`), so displaying an error alone drops the cause; this prints
/// each one exactly once, as `{:#}` does for `anyhow` errors.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("could not read")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(Chain(&e).to_string(), "could not read: disk on fire");
    }
}
