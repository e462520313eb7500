//! See [`walbust_fuzz_checks::decode`]: the property lives there so that the
//! test suite runs it too, over the committed corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walbust_fuzz_checks::decode(data));
