use std::error::Error;
use std::fmt;

/// Displays an error and its causes on one line, joined with ": ", for
/// logs (`error = %Chain(&e)`) and for the message walbust exits with.
///
/// walbust's error messages never repeat their cause (it is chained with
/// `#[source]`), so displaying an error alone drops the cause; this prints
/// each one exactly once. Some libraries' errors (tokio-postgres's among
/// them) both show their cause and return it as the source: a cause whose
/// text the line already ends with is not written again.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            let text = err.to_string();
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
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

    /// Shows its cause in its own message and returns it as the source too.
    #[derive(Debug)]
    struct Repeats(std::io::Error);
    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "db error: {}", self.0)
        }
    }
    impl Error for Repeats {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(Chain(&e).to_string(), "could not read: disk on fire");
        let e = Repeats(std::io::Error::other("ERROR: no such slot"));
        assert_eq!(Chain(&e).to_string(), "db error: ERROR: no such slot");
    }
}
