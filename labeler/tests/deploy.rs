//! The batch-engine examples in `deploy/` must stay runnable: each parses, runs `labeler run` with flags the
//! binary accepts, and gives every task the shard layout the labeler's engine detection expects.

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

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .expect("a list")
        .iter()
        .map(|s| match s {
            Value::String(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

/// Run the labeler binary with `args` and `env`; returns (exit code, stderr).
fn labeler(args: &[String], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_labeler"))
        .args(args)
        .envs(env.iter().copied())
        .env("MUST_LOG", "error")
        .output()
        .expect("run labeler");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The binary accepts `args` (clap exits 2 on a usage error); with a config path that does not exist it
/// must get as far as reading the config.
fn assert_flags_accepted(args: &[String], env: &[(&str, &str)]) {
    let (code, stderr) = labeler(args, env);
    assert_ne!(code, 2, "labeler rejected {args:?}: {stderr}");
    assert_eq!(code, 1, "{args:?}: {stderr}");
    assert!(stderr.contains("label.toml"), "expected a config error naming the file, got: {stderr}");
}

#[test]
fn deploy_kubernetes_indexed_job_runs_one_shard_per_index() {
    let job = yaml("kubernetes/label-job.yaml");
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().expect("completions");
    assert!(spec["parallelism"].as_u64().is_some_and(|p| p >= 1 && p <= completions));
    assert!(spec["backoffLimitPerIndex"].as_u64().is_some());
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never", "backoffLimitPerIndex and podFailurePolicy need Never");

    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let command = strings(&c["command"]);
    assert_eq!(&command[..2], ["labeler", "run"], "{command:?}");
    let flag = |name: &str| command.iter().position(|a| a == name).map(|i| command[i + 1].clone());
    assert_eq!(flag("--config").as_deref(), Some("/config/label.toml"));
    assert_eq!(flag("--num-shards").as_deref(), Some("$(NUM_SHARDS)"));
    let env = c["env"].as_sequence().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name);
    let num_shards: u64 = var("NUM_SHARDS").unwrap()["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(num_shards, completions, "NUM_SHARDS must equal completions");
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert_eq!(var(key).unwrap()["valueFrom"]["secretKeyRef"]["key"], key);
    }
    // The podFailurePolicy names the container it watches.
    for rule in spec["podFailurePolicy"]["rules"].as_sequence().unwrap() {
        if let Some(name) = rule["onExitCodes"]["containerName"].as_str() {
            assert_eq!(c["name"].as_str(), Some(name));
        }
    }

    // /config comes from the ConfigMap in configmap.yaml, which holds a TOML label.toml.
    let mount = c["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["mountPath"] == "/config").unwrap();
    let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let cm = yaml("kubernetes/configmap.yaml");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    let toml: toml::Value = cm["data"]["label.toml"].as_str().unwrap().parse().expect("label.toml is TOML");
    assert!(toml.get("output").is_some() && toml.get("teachers").is_some() && toml.get("dataset").is_some());

    // The binary takes these flags and the index from JOB_COMPLETION_INDEX.
    let args: Vec<String> =
        command[1..].iter().map(|a| if a == "$(NUM_SHARDS)" { num_shards.to_string() } else { a.clone() }).collect();
    assert_flags_accepted(&args, &[("JOB_COMPLETION_INDEX", "3")]);

    // And the plan job plans with the same config.
    let plan = yaml("kubernetes/plan-job.yaml");
    let plan_cmd = strings(&plan["spec"]["template"]["spec"]["containers"][0]["command"]);
    assert_eq!(plan_cmd, ["labeler", "plan", "--config", "/config/label.toml"]);
    assert_flags_accepted(&plan_cmd[1..], &[]);
}

#[test]
fn deploy_slurm_array_runs_labeler_with_requeue() {
    let script = read("slurm/label-array.sbatch");
    let directives: Vec<&str> = script.lines().filter_map(|l| l.strip_prefix("#SBATCH ")).collect();
    let array = directives.iter().find_map(|d| d.strip_prefix("--array=")).expect("an --array line");
    let range = array.split('%').next().unwrap();
    let (lo, hi) = range.split_once('-').expect("a range 0-(N-1)");
    assert_eq!(lo, "0", "shard indices start at 0");
    let n: u64 = hi.parse::<u64>().unwrap() + 1;
    assert!(directives.contains(&"--requeue"));
    assert!(
        script.contains(&format!("NUM_SHARDS=${{NUM_SHARDS:-{n}}}")),
        "NUM_SHARDS default must be the array size {n}"
    );
    let run = script.lines().find(|l| l.trim_start().starts_with("exec labeler ")).expect("an exec labeler line");
    assert!(run.contains("labeler run --config"), "{run}");

    if let Ok(out) = Command::new("bash").arg("-n").arg(deploy("slurm/label-array.sbatch")).output() {
        assert!(out.status.success(), "bash -n: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Slurm sets index and count; the flags of the script are accepted and agree with them.
    let args: Vec<String> =
        ["run", "--config", "/nonexistent/label.toml", "--num-shards", &n.to_string()].map(String::from).to_vec();
    let count = n.to_string();
    assert_flags_accepted(&args, &[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", &count)]);
}

#[test]
fn deploy_aws_batch_definition_is_json_that_runs_labeler() {
    let readme = read("aws-batch/README.md");
    let start = readme.find("```json\n").expect("a json block") + "```json\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let def: serde_json::Value = serde_json::from_str(&readme[start..end]).expect("job definition is JSON");
    let command: Vec<&str> =
        def["containerProperties"]["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&command[..2], ["labeler", "run"]);
    assert!(readme.contains("--array-properties size="));
    let args: Vec<String> = command[1..].iter().map(|s| s.to_string()).collect();
    assert_flags_accepted(&args, &[("AWS_BATCH_JOB_ARRAY_INDEX", "1"), ("AWS_BATCH_JOB_ARRAY_SIZE", "64")]);
}
