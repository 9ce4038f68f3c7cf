//! Which texts of a batch run together, at which padded shape.
//!
//! Engines want few shapes: tract builds a plan per input shape, ONNX
//! Runtime's CUDA EP a session per shape, and Core ML keeps a transformer on
//! the Neural Engine only for the shapes the model enumerates. So texts are
//! grouped by length and each group is padded to a *bucket* (the smallest
//! configured sequence length that holds its longest text), under a budget
//! of padded tokens per engine run. Sorting by length first keeps padding
//! low: short texts do not ride along at a long text's bucket.

use pomme_core::{AllowedShapes, DeviceKind, Error, Result};

/// One engine run: which texts (indices into the batch), padded to which
/// sequence length, with how many rows in all (padding rows included, when
/// the model only takes some batch sizes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub rows: Vec<usize>,
    pub seq: usize,
    pub padded_rows: usize,
}

/// The sequence length a text of `len` tokens is padded to: the smallest
/// bucket that holds it, or `len` itself without buckets (or past the
/// largest, which the caller's truncation prevents).
pub fn bucket_for(len: usize, buckets: &[usize]) -> usize {
    buckets.iter().copied().find(|&b| b >= len).unwrap_or(len)
}

/// The sequence lengths a model's enumerated `[batch, seq]` shapes allow
/// (Core ML), sorted: the default buckets for such a model.
pub fn enumerated_seq_lengths(allowed: &AllowedShapes) -> Vec<usize> {
    let mut v: Vec<usize> = match allowed {
        AllowedShapes::OneOf(shapes) => shapes
            .iter()
            .filter(|s| s.len() == 2)
            .map(|s| s[1])
            .collect(),
        AllowedShapes::Ranges(_) => Vec::new(),
    };
    v.sort_unstable();
    v.dedup();
    v
}

/// What one engine run costs beyond its padded tokens, in tokens, on a
/// CPU: it keeps the planner from splitting a batch into many tiny runs.
/// A CPU's cost is about proportional to the padded tokens, so padding is
/// worth avoiding even at the price of another run.
pub const RUN_OVERHEAD_TOKENS: usize = 32;

/// The same on an accelerator (GPU, Neural Engine): a run's fixed cost
/// (kernel launches, copies, the host-side pooling) is worth many padded
/// tokens, so texts of near lengths share one run and only a long text is
/// kept apart from short ones. Chosen by measurement on ONNX Runtime's CUDA
/// EP against 32, 2048, 4096 and 16384 (BENCHMARKS.md, "Text embeddings on
/// the GPU").
pub const ACCELERATOR_RUN_OVERHEAD_TOKENS: usize = 1024;

/// The default run overhead for an encoder on `device`.
pub fn run_overhead_tokens(device: DeviceKind) -> usize {
    match device {
        DeviceKind::Cpu => RUN_OVERHEAD_TOKENS,
        _ => ACCELERATOR_RUN_OVERHEAD_TOKENS,
    }
}

/// Splits a batch of texts with token counts `lengths` into engine runs.
///
/// Texts are sorted by length and cut into consecutive groups that minimise
/// the padded tokens computed plus `overhead` per run: a short text never
/// rides at a long text's bucket when a run of its own is cheaper. Every text lands in exactly one group; a group's
/// `padded_rows × seq` stays within `max_tokens` (a single text always
/// fits: the configuration guarantees `max_tokens ≥ max_length`); with
/// `allowed`, every group's `[padded_rows, seq]` is a shape the model takes.
pub fn plan(
    lengths: &[usize],
    buckets: &[usize],
    max_tokens: usize,
    overhead: usize,
    allowed: Option<&AllowedShapes>,
) -> Result<Vec<Group>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let n = order.len();
    let seq_of = |k: usize| bucket_for(lengths[order[k]], buckets);
    // best[j]: (cost, start of the last group) for the first j sorted texts.
    let mut best: Vec<(usize, usize)> = vec![(usize::MAX, 0); n + 1];
    best[0] = (0, 0);
    for j in 1..=n {
        let seq = seq_of(j - 1);
        for i in (0..j).rev() {
            let rows = j - i;
            if rows > 1 && rows * seq > max_tokens {
                break;
            }
            if best[i].0 == usize::MAX {
                continue;
            }
            let cost = best[i].0.saturating_add(rows * seq + overhead);
            // Ties go to the longer group (fewer runs).
            if cost <= best[j].0 {
                best[j] = (cost, i);
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = best[j].1;
        groups.push((order[i..j].to_vec(), seq_of(j - 1)));
        j = i;
    }
    groups.reverse();
    let mut out = Vec::with_capacity(groups.len());
    for (rows, seq) in groups {
        match allowed {
            None => {
                let padded_rows = rows.len();
                out.push(Group {
                    rows,
                    seq,
                    padded_rows,
                })
            }
            Some(a) => split_to_allowed(rows, seq, a, &mut out)?,
        }
    }
    Ok(out)
}

/// Splits a group into batch sizes the model enumerates: the largest that
/// fits the rows left, else the smallest larger one (padding rows added).
fn split_to_allowed(
    mut rows: Vec<usize>,
    seq: usize,
    allowed: &AllowedShapes,
    out: &mut Vec<Group>,
) -> Result<()> {
    let ceiling = rows.len().max(64);
    let sizes: Vec<usize> = (1..=ceiling)
        .filter(|&b| allowed.allows(&[b, seq]))
        .collect();
    if sizes.is_empty() {
        return Err(Error::invalid_input(format!(
            "no input shape of this model has sequence length {seq} (it takes {allowed})"
        )));
    }
    while !rows.is_empty() {
        let n = rows.len();
        let b = sizes
            .iter()
            .rev()
            .copied()
            .find(|&b| b <= n)
            .unwrap_or(sizes[0]);
        let take = b.min(n);
        let rest = rows.split_off(take);
        out.push(Group {
            rows,
            seq,
            padded_rows: b,
        });
        rows = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_texts_do_not_ride_at_a_long_texts_bucket() {
        let buckets = [16, 32, 64, 128];
        // Two short, one long: two runs cost 2×16 + 128 (+ overheads) < 3×128.
        let g = plan(&[10, 120, 12], &buckets, 4096, RUN_OVERHEAD_TOKENS, None).unwrap();
        assert_eq!(
            g,
            vec![
                Group {
                    rows: vec![0, 2],
                    seq: 16,
                    padded_rows: 2
                },
                Group {
                    rows: vec![1],
                    seq: 128,
                    padded_rows: 1
                },
            ]
        );
        // Close lengths share a run rather than pay a run's overhead.
        let g = plan(&[10, 20, 12], &buckets, 4096, RUN_OVERHEAD_TOKENS, None).unwrap();
        assert_eq!(
            g,
            vec![Group {
                rows: vec![0, 2, 1],
                seq: 32,
                padded_rows: 3
            }]
        );
        // The budget splits runs of one bucket.
        let g = plan(&[100; 5], &buckets, 256, RUN_OVERHEAD_TOKENS, None).unwrap();
        assert_eq!(
            g.iter().map(|g| g.rows.len()).collect::<Vec<_>>(),
            vec![1, 2, 2]
        );
    }

    #[test]
    fn on_an_accelerator_near_lengths_share_a_run_and_long_texts_stay_apart() {
        let buckets = [16, 32, 64, 128, 256];
        let over = run_overhead_tokens(DeviceKind::Cuda);
        assert_eq!(run_overhead_tokens(DeviceKind::Cpu), RUN_OVERHEAD_TOKENS);
        // Texts of 9–64 tokens: the CPU splits them by bucket, a GPU pads them to one.
        let short = [10, 12, 20, 30, 40, 9, 33, 64];
        let cpu = plan(&short, &buckets, 16_384, RUN_OVERHEAD_TOKENS, None).unwrap();
        assert!(cpu.len() >= 3, "{cpu:?}");
        let gpu = plan(&short, &buckets, 16_384, over, None).unwrap();
        assert_eq!(gpu.len(), 1, "{gpu:?}");
        assert_eq!((gpu[0].seq, gpu[0].rows.len()), (64, 8));
        // A 200-token text among them still runs apart at 256 on a GPU.
        let mixed = [10, 12, 20, 30, 40, 9, 33, 64, 200, 190];
        let gpu = plan(&mixed, &buckets, 16_384, over, None).unwrap();
        let shapes: Vec<(usize, usize)> = gpu.iter().map(|g| (g.seq, g.rows.len())).collect();
        assert_eq!(shapes, vec![(64, 8), (256, 2)]);
        // And the token budget splits whatever the overhead: 10 × 256 > 1024.
        let gpu = plan(&[200; 10], &buckets, 1024, over, None).unwrap();
        assert!(gpu.iter().all(|g| g.padded_rows * g.seq <= 1024), "{gpu:?}");
        assert_eq!(gpu.len(), 3);
    }

    #[test]
    fn without_buckets_a_group_is_padded_to_its_longest_text() {
        let g = plan(&[3, 7, 5], &[], 100, RUN_OVERHEAD_TOKENS, None).unwrap();
        assert_eq!(
            g,
            vec![Group {
                rows: vec![0, 2, 1],
                seq: 7,
                padded_rows: 3
            }]
        );
        assert_eq!(bucket_for(300, &[16, 256]), 300);
    }

    #[test]
    fn enumerated_shapes_limit_batch_sizes_and_lengths() {
        let allowed =
            AllowedShapes::OneOf(vec![vec![1, 16], vec![4, 16], vec![1, 64], vec![4, 64]]);
        assert_eq!(enumerated_seq_lengths(&allowed), vec![16, 64]);
        let g = plan(
            &[5, 5, 5, 5, 5, 5],
            &[16, 64],
            1024,
            RUN_OVERHEAD_TOKENS,
            Some(&allowed),
        )
        .unwrap();
        let sizes: Vec<(usize, usize)> = g.iter().map(|g| (g.rows.len(), g.padded_rows)).collect();
        assert_eq!(sizes, vec![(4, 4), (1, 1), (1, 1)]);
        let only4 = AllowedShapes::OneOf(vec![vec![4, 16]]);
        let g = plan(&[5, 6], &[16], 1024, RUN_OVERHEAD_TOKENS, Some(&only4)).unwrap();
        assert_eq!((g[0].rows.len(), g[0].padded_rows), (2, 4));
        let e = plan(&[20], &[32], 1024, RUN_OVERHEAD_TOKENS, Some(&only4)).unwrap_err();
        assert!(
            e.message().contains("sequence length 32"),
            "{}",
            e.message()
        );
    }

    proptest! {
        #[test]
        fn every_text_once_within_budget(
            lengths in proptest::collection::vec(1usize..=256, 0..80),
            max_tokens in 256usize..5000,
            overhead in prop_oneof![Just(RUN_OVERHEAD_TOKENS), Just(ACCELERATOR_RUN_OVERHEAD_TOKENS), 0usize..4096],
        ) {
            let buckets = [16, 32, 64, 128, 256];
            let groups = plan(&lengths, &buckets, max_tokens, overhead, None).unwrap();
            let mut seen: Vec<usize> = groups.iter().flat_map(|g| g.rows.clone()).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for g in &groups {
                prop_assert!(g.padded_rows * g.seq <= max_tokens);
                prop_assert!(buckets.contains(&g.seq));
                for &r in &g.rows {
                    prop_assert!(lengths[r] <= g.seq);
                    prop_assert_eq!(bucket_for(lengths[r], &buckets) <= g.seq, true);
                }
            }
        }
    }
}
