//! A short run of every fuzz target on stable Rust: the committed corpus
//! (`fuzz/corpus/<target>/`), then seeded mutations of it (bit flips, byte
//! changes, insertions, deletions, truncations and splices of two inputs).
//! Deterministic: the same seeds give the same inputs on every machine, and a
//! failure prints the seed and the input to turn into a unit test.
//!
//! The long runs are libFuzzer's (see fuzz/README.md); this one makes sure
//! the targets, their corpus and the code under them stay in step, and that
//! no already-known input shape regresses.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use walbust_fuzz_checks::TARGETS;

/// Mutated inputs per target: seconds of work in a debug build.
const MUTATIONS: usize = 4_000;
const MAX_LEN: usize = 4096;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 if at < input.len() => input[at] = rng.next() as u8,
            2 => input.insert(at, rng.next() as u8),
            3 if at < input.len() => {
                input.remove(at);
            }
            4 => input.truncate(at),
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
        }
    }
    input.truncate(MAX_LEN);
    input
}

fn run(name: &str, check: fn(&[u8]), input: &[u8], what: &str) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        panic!("fuzz target {name} failed on {what}: input {input:02x?}");
    }
}

#[test]
fn every_target_holds_on_its_corpus_and_mutations_of_it() {
    for (name, check) in TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
        for (i, seed) in seeds.iter().enumerate() {
            run(name, check, seed, &format!("corpus entry {i}"));
        }
        let seed = 0x5EED_0000_0000_0001 ^ name.len() as u64;
        let mut rng = Rng(seed);
        for i in 0..MUTATIONS {
            let input = mutate(&mut rng, &seeds);
            run(
                name,
                check,
                &input,
                &format!("mutation {i} (seed {seed:#x})"),
            );
        }
        println!(
            "{name}: {} corpus entries and {MUTATIONS} mutations held",
            seeds.len()
        );
    }
}
