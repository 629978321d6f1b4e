//! What to run: the sizes of each scenario, parsed from the flags (`PAIRSxROUNDS`, counts).

use anyhow::{Context, Result};

pub fn pairs(spec: &str) -> Result<Vec<(usize, usize)>> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (a, b) = s.split_once('x').context("expected AxB")?;
            Ok((a.trim().parse()?, b.trim().parse()?))
        })
        .collect()
}

pub fn counts(spec: &str) -> Result<Vec<usize>> {
    spec.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Ok(s.trim().parse()?))
        .collect()
}

pub struct Plan {
    pub relay: Vec<(usize, usize)>,
    pub idle: Vec<usize>,
    pub presence: Vec<(usize, usize)>,
    pub setup: Vec<(usize, usize)>,
}
