//! The data-parallel training examples in `deploy/` must stay runnable: each parses, launches the trainer
//! with flags the binary accepts, and sets up one process per GPU the way `trainer::distributed` reads it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(rel)
}

fn read(rel: &str) -> String {
    let path = deploy(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The binary accepts `args` (clap exits 2 on a usage error) and gets as far as reading the config,
/// whose path does not exist here.
fn assert_flags_accepted(args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("run trainer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "trainer rejected {args:?}: {stderr}");
    assert!(!out.status.success(), "{args:?} ran although its config does not exist");
    assert!(stderr.contains("train.toml"), "expected a config error naming the file, got: {stderr}");
}

#[test]
fn deploy_pytorchjob_runs_one_trainer_per_pod() {
    let job: Value = serde_yaml::from_str(&read("kubernetes/train-pytorchjob.yaml")).expect("valid YAML");
    assert_eq!(job["kind"], "PyTorchJob");
    let replicas = &job["spec"]["pytorchReplicaSpecs"];
    for role in ["Master", "Worker"] {
        let spec = &replicas[role];
        assert!(spec["replicas"].as_u64().is_some_and(|n| n >= 1), "{role}");
        let container = &spec["template"]["spec"]["containers"][0];
        // The training operator injects MASTER_ADDR/PORT, WORLD_SIZE and RANK into this container.
        assert_eq!(container["name"], "pytorch", "{role}");
        assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"].as_u64(), Some(1), "{role}: one GPU per pod");
        let command: Vec<String> = container["command"]
            .as_sequence()
            .expect("a command list")
            .iter()
            .map(|v| v.as_str().expect("strings").to_owned())
            .collect();
        assert_eq!(command[0], "trainer");
        assert_flags_accepted(&command[1..]);
    }
    assert_eq!(replicas["Master"]["replicas"].as_u64(), Some(1), "rank 0 is the one Master");
}

#[test]
fn deploy_slurm_runs_torchrun_per_node_with_the_trainer() {
    let script = read("slurm/train-ddp.sbatch");
    assert!(script.contains("#SBATCH --ntasks-per-node=1"), "one torchrun per node");
    let launch = script.split("srun torchrun").nth(1).expect("an srun torchrun line").replace("\\\n", " ");
    for flag in ["--nnodes", "--nproc-per-node", "--rdzv-backend c10d", "--rdzv-endpoint", "--no-python"] {
        assert!(launch.contains(flag), "torchrun lacks {flag}");
    }
    // The trainer's own arguments, with the script's variables filled in.
    let args = launch.split("\"$TRAINER\"").nth(1).expect("the trainer command").lines().next().unwrap();
    let args: Vec<String> =
        args.split_whitespace().map(|a| a.replace("\"$CONFIG\"", "/nonexistent/train.toml")).collect();
    assert_eq!(args[0], "train");
    assert_flags_accepted(&args);
}
