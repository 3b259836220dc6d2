//! The loader end to end over committed shards on local disk and in an in-memory object store.

mod data_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use data_support::*;
use shards::Location;
use trainer::batch::Batch;
use trainer::data::{Augmentation, DataError, Loader, RankSlice, SamplerState, Sampling, Task};

fn keys(batches: &[Batch]) -> Vec<String> {
    batches.iter().flat_map(|b| b.keys.iter().map(|(_, k)| k.clone())).collect()
}

fn take(loader: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch().unwrap()).collect()
}

#[test]
fn one_pass_reads_every_committed_row_once_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (path, root) = local_root(dir.path(), "a");
    let rt = runtime();
    rt.block_on(write_dataset(&root, "a", 23, 3, 40, 30, 4));
    // An attempt that never committed: its file must not be read.
    rt.block_on(async {
        let mut orphan = shards::ShardCommitter::new(root.clone(), shards::ShardId { index: 0, count: 3 }, "lost");
        let batch = schemas::records_to_batch(&[full_record("a", "orphan", 40, 30, 0)]).unwrap();
        let bytes = shards::encode_parquet(std::slice::from_ref(&batch), batch.schema(), props(4), "orphan").unwrap();
        orphan.put_file("records", bytes, 1).await.unwrap();
    });
    let mut cfg = config(vec![spec("a", &path, all_tasks())], 32, 5);
    cfg.passes = Some(1);
    let loader = Loader::new(cfg, SamplerState::default()).unwrap();
    assert_eq!(loader.dataset_rows(), &[("a".to_owned(), 23)]);
    let batches: Vec<Batch> = loader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.size).collect::<Vec<_>>(), vec![5, 5, 5, 5, 3]);
    let seen: BTreeSet<String> = keys(&batches).into_iter().collect();
    let want: BTreeSet<String> = (0..23).map(|i| format!("a-{i:04}")).collect();
    assert_eq!(seen, want);
}

#[test]
fn batches_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (path_a, root_a) = local_root(dir.path(), "a");
    let (path_b, root_b) = local_root(dir.path(), "b");
    let rt = runtime();
    rt.block_on(write_dataset(&root_a, "a", 6, 1, 48, 36, 3));
    rt.block_on(async {
        let records: Vec<_> = (0..6).map(|i| image_only("b", &format!("b-{i}"), 50, 40)).collect();
        write_shard(&root_b, 0, 1, &records, 3).await;
    });
    // Dataset a trains only cls and seg even though it has every label; b has no labels at all.
    let mut cfg = config(vec![spec("a", &path_a, vec![Task::Cls, Task::Seg]), spec("b", &path_b, all_tasks())], 40, 12);
    cfg.passes = Some(1);
    let mut loader = Loader::new(cfg, SamplerState::default()).unwrap();
    let b = loader.next_batch().unwrap();
    let s = 40;
    assert_eq!((b.size, b.image_size, b.num_classes), (12, s, 4));
    assert_eq!(b.images.len(), 12 * 3 * s * s);
    assert_eq!(b.cls_probs.len(), 12 * 4);
    assert_eq!((b.seg.len(), b.depth.len(), b.depth_valid.len()), (12 * s * s, 12 * s * s, 12 * s * s));
    for i in 0..b.size {
        let (dataset, key) = &b.keys[i];
        let from_a = dataset == "a";
        assert_eq!(b.has_cls[i], from_a, "{key}");
        assert_eq!(b.has_seg[i], from_a, "{key}");
        assert!(!b.has_det[i] && !b.has_depth[i], "{key}: tasks not configured or absent");
        assert!(b.boxes[i].is_empty());
        let probs = &b.cls_probs[i * 4..(i + 1) * 4];
        let seg = &b.seg[i * s * s..(i + 1) * s * s];
        if from_a {
            let n: usize = key[2..].parse().unwrap();
            let mut want = [0.0f32; 4];
            want[n % 4] = 1.0;
            assert_eq!(probs, &want);
            assert!(seg.contains(&2), "{key}: the labelled square survives some of the crop");
        } else {
            assert_eq!(probs, &[0.0; 4]);
            assert!(seg.iter().all(|&v| v == 255));
        }
        assert!(b.depth_valid[i * s * s..(i + 1) * s * s].iter().all(|&v| v == 0));
        assert!(b.images[i * 3 * s * s..(i + 1) * 3 * s * s].iter().any(|&v| v != 0.0));
    }
    assert!(matches!(loader.next_batch(), Err(DataError::Exhausted)));
}

#[test]
fn all_tasks_reach_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (path, root) = local_root(dir.path(), "a");
    runtime().block_on(write_dataset(&root, "a", 8, 2, 64, 64, 4));
    let mut cfg = config(vec![spec("a", &path, all_tasks())], 64, 8);
    cfg.augment = Augmentation::none();
    let mut loader = Loader::new(cfg, SamplerState::default()).unwrap();
    let b = loader.next_batch().unwrap();
    let ss = 64 * 64;
    for i in 0..8 {
        assert!(b.has_cls[i] && b.has_det[i] && b.has_seg[i] && b.has_depth[i]);
        // Without augmentation the 64×64 image fills the crop; the box is its middle half.
        let bx = b.boxes[i][0];
        assert_eq!((bx.x0, bx.y0, bx.x1, bx.y1), (16.0, 16.0, 48.0, 48.0));
        assert!(b.depth_valid[i * ss..(i + 1) * ss].iter().all(|&v| v == 1));
        assert_eq!(b.seg[i * ss + 32 * 64 + 32], 2);
        assert_eq!(b.seg[i * ss], 0);
    }
}

/// Saving the state after any batch and starting a new loader from it gives the same batches as
/// running on, bit for bit, whatever the number of workers.
#[test]
fn resume_from_a_saved_state_repeats_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (path_a, root_a) = local_root(dir.path(), "a");
    let (path_b, root_b) = local_root(dir.path(), "b");
    let rt = runtime();
    rt.block_on(write_dataset(&root_a, "a", 30, 3, 40, 32, 4));
    rt.block_on(write_dataset(&root_b, "b", 7, 1, 36, 36, 3));
    for sampling in [Sampling::Uniform, Sampling::PerDataset] {
        let mut cfg = config(vec![spec("a", &path_a, all_tasks()), spec("b", &path_b, all_tasks())], 32, 4);
        cfg.sampling = sampling;
        cfg.shuffle_window = 2;
        let mut full = Loader::new(cfg.clone(), SamplerState::default()).unwrap();
        // 14 batches of 4 cross an epoch boundary of the uniform stream (37 rows).
        let reference = take(&mut full, 14);
        for cut in [0usize, 3, 9] {
            let mut first = Loader::new(cfg.clone(), SamplerState::default()).unwrap();
            take(&mut first, cut);
            let saved = serde_json::to_string(&first.state()).unwrap();
            drop(first);
            let mut resumed_cfg = cfg.clone();
            resumed_cfg.workers = if cut % 2 == 0 { 1 } else { 3 };
            let mut resumed = Loader::new(resumed_cfg, serde_json::from_str(&saved).unwrap()).unwrap();
            let rest = take(&mut resumed, 14 - cut);
            for (a, b) in reference[cut..].iter().zip(&rest) {
                assert_eq!(a.keys, b.keys, "{sampling:?} cut {cut}");
                assert_eq!(a.images, b.images, "{sampling:?} cut {cut}: augmentation differs");
                assert_eq!(a.boxes, b.boxes);
                assert_eq!(a.seg, b.seg);
                assert_eq!(a.depth, b.depth);
            }
        }
    }
}

#[test]
fn per_dataset_sampling_balances_datasets_and_uniform_weighs_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let (path_a, root_a) = local_root(dir.path(), "a");
    let (path_b, root_b) = local_root(dir.path(), "b");
    let rt = runtime();
    rt.block_on(write_dataset(&root_a, "a", 60, 2, 16, 16, 8));
    rt.block_on(write_dataset(&root_b, "b", 6, 1, 16, 16, 3));
    let count = |sampling| {
        let mut cfg = config(vec![spec("a", &path_a, all_tasks()), spec("b", &path_b, all_tasks())], 16, 33);
        cfg.sampling = sampling;
        let mut loader = Loader::new(cfg, SamplerState::default()).unwrap();
        let mut per = BTreeMap::new();
        for b in take(&mut loader, 20) {
            for (d, _) in b.keys {
                *per.entry(d).or_insert(0usize) += 1;
            }
        }
        per
    };
    let per = count(Sampling::PerDataset);
    // 660 samples, p = 1/2: 4.5 sd is about 58.
    assert!((per["a"] as i64 - 330).abs() < 58, "{per:?}");
    let uni = count(Sampling::Uniform);
    // 660 samples = exactly 10 epochs of 66 rows.
    assert_eq!((uni["a"], uni["b"]), (600, 60));
}

#[test]
fn reads_from_an_object_store() {
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let root = Location::from_store(store, "labels/pool", "memory:///labels/pool");
    runtime().block_on(write_dataset(&root, "pool", 10, 2, 24, 24, 3));
    let mut cfg = config(vec![spec("pool", "memory:///labels/pool", all_tasks())], 24, 5);
    cfg.passes = Some(2);
    let loader = Loader::with_locations(cfg, vec![root], SamplerState::default()).unwrap();
    let all: Vec<Batch> = loader.map(Result::unwrap).collect();
    assert_eq!(all.len(), 4);
    let mut counts = BTreeMap::new();
    for k in keys(&all) {
        *counts.entry(k).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|&c| c == 2));
}

#[test]
fn a_state_from_another_sampling_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path_a, root_a) = local_root(dir.path(), "a");
    let (path_b, root_b) = local_root(dir.path(), "b");
    let rt = runtime();
    rt.block_on(write_dataset(&root_a, "a", 4, 1, 16, 16, 4));
    rt.block_on(write_dataset(&root_b, "b", 4, 1, 16, 16, 4));
    let cfg = config(vec![spec("a", &path_a, all_tasks()), spec("b", &path_b, all_tasks())], 16, 2);
    let mut loader = Loader::new(cfg.clone(), SamplerState::default()).unwrap();
    loader.next_batch().unwrap();
    let state = loader.state();
    let mut other = cfg;
    other.sampling = Sampling::PerDataset;
    let err = Loader::new(other, state).err().unwrap();
    assert!(matches!(err, DataError::State { .. }), "{err}");
}

/// Each rank's batches, concatenated per step, for `world` ranks starting at `start`.
fn rank_union(cfg: &trainer::data::DataConfig, world: usize, start: &SamplerState, steps: usize) -> Vec<Vec<String>> {
    let mut per_rank: Vec<Vec<Batch>> = (0..world)
        .map(|rank| {
            let mut c = cfg.clone();
            c.rank = RankSlice { rank, world };
            take(&mut Loader::new(c, start.clone()).unwrap(), steps)
        })
        .collect();
    (0..steps)
        .map(|step| per_rank.iter_mut().flat_map(|b| b[step].keys.iter().map(|(_, k)| k.clone())).collect())
        .collect()
}

#[test]
fn ranks_split_every_global_batch_also_after_a_resume_at_another_world_size() {
    let dir = tempfile::tempdir().unwrap();
    let (path_a, root_a) = local_root(dir.path(), "a");
    let (path_b, root_b) = local_root(dir.path(), "b");
    let rt = runtime();
    rt.block_on(write_dataset(&root_a, "a", 30, 2, 40, 30, 4));
    rt.block_on(write_dataset(&root_b, "b", 18, 1, 30, 40, 4));
    let cfg = config(vec![spec("a", &path_a, all_tasks()), spec("b", &path_b, all_tasks())], 32, 8);

    // One process: 12 global batches, and the state after the 5th.
    let mut single = Loader::new(cfg.clone(), SamplerState::default()).unwrap();
    let first = take(&mut single, 5);
    let state = single.state();
    let rest = take(&mut single, 7);
    let want: Vec<Vec<String>> =
        first.iter().chain(&rest).map(|b| b.keys.iter().map(|(_, k)| k.clone()).collect()).collect();

    // Two ranks from the start: disjoint halves whose union (in rank order) is the single batch.
    let two = rank_union(&cfg, 2, &SamplerState::default(), 12);
    assert_eq!(two, want);
    // Resumed from the single process's state at 4 ranks (and at 2), the batches go on unchanged.
    assert_eq!(rank_union(&cfg, 4, &state, 7), want[5..]);
    assert_eq!(rank_union(&cfg, 2, &state, 7), want[5..]);
    // A rank's state is the global one, so a 2-rank checkpoint resumes anywhere.
    let mut c = cfg.clone();
    c.rank = RankSlice { rank: 1, world: 2 };
    let mut rank1 = Loader::new(c, SamplerState::default()).unwrap();
    let _ = take(&mut rank1, 5);
    assert_eq!(rank1.state(), state);

    // A global batch that does not divide over the ranks is refused with the reason.
    let mut c = cfg.clone();
    c.rank = RankSlice { rank: 0, world: 3 };
    let err = Loader::new(c, SamplerState::default()).unwrap_err().to_string();
    assert!(err.contains("batch_size 8") && err.contains("3 processes"), "{err}");
}

/// Mean total-variation distance between each batch's histogram of labeler datasets (the key's prefix)
/// and the union's proportions.
fn mean_tv(batches: &[Batch], shares: &[(&str, f64)]) -> f64 {
    let tvs: Vec<f64> = batches
        .iter()
        .map(|b| {
            shares
                .iter()
                .map(|(name, share)| {
                    let n = b.keys.iter().filter(|(_, k)| k.starts_with(&format!("{name}-"))).count();
                    (n as f64 / b.size as f64 - share).abs()
                })
                .sum::<f64>()
                / 2.0
        })
        .collect();
    tvs.iter().sum::<f64>() / tvs.len() as f64
}

/// One labeler output root holding a pool and three supervised sets, written sorted by dataset as the
/// labeler writes them (so each row group holds one dataset): with interleaving, the real loader's
/// batches mix the datasets far better than plain windows, over the same rows.
#[test]
#[allow(clippy::print_stdout)] // reports the distances it measured
fn batches_mix_the_datasets_of_one_output_root() {
    let dir = tempfile::tempdir().unwrap();
    let (path, root) = local_root(dir.path(), "demo");
    let sets = [("pool", 96u64), ("cls", 32), ("det", 16), ("seg", 16)];
    let mut records = Vec::new();
    for (name, n) in sets {
        records.extend((0..n).map(|i| full_record(name, &format!("{name}-{i:04}"), 24, 24, i)));
    }
    runtime().block_on(write_shard(&root, 0, 1, &records, 8));
    let total: u64 = sets.iter().map(|s| s.1).sum();
    let shares: Vec<(&str, f64)> = sets.iter().map(|(n, r)| (*n, *r as f64 / total as f64)).collect();
    let mut tv = Vec::new();
    for interleave in [false, true] {
        let mut mean = 0.0;
        for seed in 0..8 {
            let mut cfg = config(vec![spec("demo", &path, vec![Task::Cls])], 16, 16);
            cfg.seed = seed;
            cfg.interleave_datasets = interleave;
            cfg.passes = Some(1);
            let batches: Vec<Batch> = Loader::new(cfg, SamplerState::default()).unwrap().map(Result::unwrap).collect();
            assert_eq!(batches.iter().map(|b| b.size as u64).sum::<u64>(), total, "one pass, every row once");
            mean += mean_tv(&batches, &shares) / 8.0;
        }
        tv.push(mean);
    }
    // I.i.d. draws of 16 from these proportions: about 0.15. 20 row groups of 8 rows and windows of 4 row
    // groups leave the two smallest sets (2 row groups each) out of most windows, so this layout gains
    // less than one with more row groups per dataset (see the sampler's unit test).
    println!("mean TV of a batch of 16 from the union: plain windows {:.3}, interleaved {:.3}", tv[0], tv[1]);
    assert!(tv[1] < 0.9 * tv[0], "plain {:.3}, interleaved {:.3}", tv[0], tv[1]);
}
