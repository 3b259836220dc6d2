//! The experiment's steps, each one command of the project's own binaries, as a user would run them:
//!
//! 1. `world` renders the pre-training world and the shifted downstream world;
//! 2. `labeler` turns each labelled split into shards (its truth is the supervised label; the demo teachers
//!    fill the other columns, which nothing reads);
//! 3. `trainer train` trains one teacher per task on its split's truth (same architecture as the student,
//!    paper §3.2) and `trainer export` exports each to ONNX with labeler specs;
//! 4. `labeler` labels the unlabelled pool with the exported teachers;
//! 5. `trainer train` trains the students: Table 3's task subsets, Table 4's one-teacher students, the
//!    supervised multi-task baseline of Table 5 (labelled splits, equal per-dataset sampling), and the
//!    second-round student that learns from the exported first-round MuST student's labels;
//! 6. `trainer finetune` fine-tunes every model (and a random init) on every downstream task.
//!
//! Every step is skipped or resumed by the tool itself when its output is complete (a finished training
//! run returns at once, a committed shard is not labelled again, finished fine-tuning points are kept),
//! so re-running `make experiment` continues where a killed run stopped. Each command's output goes to
//! `logs/<step>.log`, its wall time to `timings.jsonl`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;

use crate::scale::Scale;

/// Pre-training tasks: (labeler/trainer task name, world split directory, short name).
pub const TASKS: [(&str, &str, &str); 4] = [
    ("classification", "cls", "cls"),
    ("detection", "det", "det"),
    ("segmentation", "seg", "seg"),
    ("depth", "depth", "depth"),
];

/// Downstream tasks: (world directory, `trainer finetune` kind, classes).
pub const DOWNSTREAM: [(&str, &str, Option<u32>); 4] = [
    ("normals", "normals", None),
    ("segmentation", "segmentation", Some(7)),
    ("depth", "depth", None),
    ("nearest_object", "classification", Some(5)),
];

/// Students trained on the pool's pseudo labels: (arm name, tasks).
pub const STUDENT_ARMS: [(&str, &[&str]); 7] = [
    ("cls", &["classification"]),
    ("cls+depth", &["classification", "depth"]),
    ("cls+depth+seg", &["classification", "depth", "segmentation"]),
    ("must", &["classification", "depth", "segmentation", "detection"]),
    ("det", &["detection"]),
    ("seg", &["segmentation"]),
    ("depth", &["depth"]),
];

/// Every model fine-tuned, by report name, in the order [`Experiment::pretrain`] returns them.
pub const MODELS: [&str; 14] = [
    "teacher-cls",
    "teacher-det",
    "teacher-seg",
    "teacher-depth",
    "student-cls",
    "student-cls+depth",
    "student-cls+depth+seg",
    "student-must",
    "student-det",
    "student-seg",
    "student-depth",
    "student-round2",
    "supervised-multitask",
    "random",
];

/// Where the binaries and the repository are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub bin_dir: PathBuf,
    pub repo: PathBuf,
}

impl Tools {
    fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.is_file() {
            bail!("{} not found: build the workspace first (`make build`)", path.display());
        }
        Ok(path)
    }
}

/// One experiment directory.
pub struct Experiment {
    pub out: PathBuf,
    pub scale: Scale,
    pub tools: Tools,
}

/// A model whose trunk is fine-tuned: a name for the report and its run directory (`None`: random init).
#[derive(Debug, Clone)]
pub struct Pretrained {
    pub name: String,
    pub run: Option<PathBuf>,
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

impl Experiment {
    fn world(&self) -> PathBuf {
        self.out.join("world")
    }
    fn downstream(&self) -> PathBuf {
        self.out.join("downstream")
    }
    fn seed_dir(&self, seed: u64) -> PathBuf {
        self.out.join(format!("seed-{seed}"))
    }

    /// Runs `program args`, its output to `logs/<step>.log`, and records the wall time.
    fn run(&self, step: &str, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let logs = self.out.join("logs");
        fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{step}.log"));
        let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let t0 = Instant::now();
        let status = Command::new(program)
            .args(args)
            .env("MUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting {}", program.display()))?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut timings = fs::OpenOptions::new().create(true).append(true).open(self.out.join("timings.jsonl"))?;
        // One write of the whole line: appends from the seeds' threads never interleave.
        let line = format!("{}\n", json!({"step": step, "seconds": seconds, "ok": status.success()}));
        timings.write_all(line.as_bytes())?;
        if !status.success() {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            bail!("step {step} failed ({status}); its log is {}:\n{}", log_path.display(), tail.join("\n"));
        }
        Ok(())
    }

    fn write(&self, path: &Path, text: &str) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Step 1: both worlds.
    pub fn worlds(&self) -> anyhow::Result<()> {
        let s = &self.scale;
        let side = s.image_size.to_string();
        if !self.world().join("world.json").is_file() {
            let (n, pool) = (s.split_images.to_string(), s.pool_images.to_string());
            let out = self.world().display().to_string();
            let args = [
                "--out", &out, "--seed", "7", "--width", &side, "--height", &side, "--cls", &n, "--det", &n, "--seg",
                &n, "--depth", &n, "--pool", &pool, "--eval", "4",
            ];
            self.run("world", &self.tools.bin("world")?, &args)?;
        }
        if !self.downstream().join("downstream.json").is_file() {
            let out = self.downstream().display().to_string();
            let (train, val, test) =
                (s.downstream_train.to_string(), s.downstream_val.to_string(), s.downstream_test.to_string());
            let args = [
                "downstream",
                "--out",
                &out,
                "--seed",
                "11",
                "--width",
                &side,
                "--height",
                &side,
                "--train",
                &train,
                "--val",
                &val,
                "--test",
                &test,
            ];
            self.run("downstream", &self.tools.bin("world")?, &args)?;
        }
        Ok(())
    }

    /// Labels `datasets` (TOML `[[dataset]]` blocks) with `teachers` (spec files) into `output`.
    fn label(&self, step: &str, output: &Path, teachers: &[PathBuf], datasets: &str) -> anyhow::Result<()> {
        let list: Vec<String> = teachers.iter().map(|t| toml_path(t)).collect();
        let text = format!(
            "teachers = [{}]\noutput = {}\n\n[run]\nprovider = \"cpu\"\n\n{datasets}",
            list.join(", "),
            toml_path(output)
        );
        let config = self.out.join("configs").join(format!("{step}.toml"));
        self.write(&config, &text)?;
        let (config, output) = (config.display().to_string(), output.display().to_string());
        let args =
            ["run", "--config", &config, "--output", &output, "--shard", "0", "--num-shards", "1", "--plan-if-missing"];
        self.run(step, &self.tools.bin("labeler")?, &args)
    }

    /// Step 2: each labelled split as shards (its own truth as the supervised label).
    pub fn supervised_shards(&self) -> anyhow::Result<()> {
        let demo = self.tools.repo.join("teachers").join("demo.toml");
        let w = self.world();
        for (task, split, _) in TASKS {
            let label = match task {
                "classification" => {
                    format!("classification = {{ csv = {} }}", toml_path(&w.join(split).join("labels.csv")))
                }
                "detection" => format!("detection = {{ coco = {} }}", toml_path(&w.join(split).join("instances.json"))),
                "segmentation" => {
                    format!(
                        "segmentation = {{ masks = {}, extension = \"png\" }}",
                        toml_path(&w.join(split).join("seg"))
                    )
                }
                _ => format!(
                    "depth = {{ maps = {}, format = \"png16\", scale = 0.001 }}",
                    toml_path(&w.join(split).join("depth"))
                ),
            };
            let dataset = format!(
                "[[dataset]]\nname = \"{split}\"\nlocation = {}\nsupervised = {{ {label} }}\n",
                toml_path(&w.join(split).join("images"))
            );
            self.label(
                &format!("shards-{split}"),
                &self.out.join("shards").join(split),
                std::slice::from_ref(&demo),
                &dataset,
            )?;
        }
        Ok(())
    }

    /// A `trainer train` run: `datasets` are (name, shard root, tasks).
    fn train(
        &self,
        step: &str,
        out: &Path,
        seed: u64,
        datasets: &[(String, PathBuf, Vec<&str>)],
        sampling: &str,
    ) -> anyhow::Result<()> {
        let s = &self.scale;
        let mut text = format!(
            "out = {}\n\n[data]\nimage_size = {side}\nbatch_size = {bs}\nsampling = \"{sampling}\"\nseed = {seed}\n\
             workers = 1\nnum_classes = {{ cls = 8, det = 5, seg = 7 }}\n\
             augment = {{ scale_min = 0.5, scale_max = 2.0, hflip = true }}\n",
            toml_path(out),
            side = s.image_size,
            bs = s.batch_size,
        );
        for (name, root, tasks) in datasets {
            let tasks: Vec<String> = tasks.iter().map(|t| format!("{t:?}")).collect();
            text.push_str(&format!(
                "\n[[data.datasets]]\nname = \"{name}\"\nlocation = {}\ntasks = [{}]\n",
                toml_path(root),
                tasks.join(", ")
            ));
        }
        text.push_str(&format!(
            "\n{}\n[optim]\noptimizer = \"adamw\"\nlr = {lr}\nweight_decay = 1e-4\nsteps = {steps}\nwarmup_steps = {warm}\n\
             clip_grad_norm = 10.0\n\n[run]\ndevice = \"cpu\"\nthreads = {threads}\ninit_seed = {seed}\nlog_every = 25\n\
             checkpoint_every = {steps}\nkeep_checkpoints = 1\n",
            model_section(),
            lr = s.pretrain_lr,
            steps = s.pretrain_steps,
            warm = (s.pretrain_steps / 10).max(1).min(s.pretrain_steps - 1),
            threads = s.threads,
        ));
        let config = self.out.join("configs").join(format!("{step}.toml"));
        self.write(&config, &text)?;
        self.run(step, &self.tools.bin("trainer")?, &["train", "--config", &config.display().to_string()])
    }

    fn export(&self, step: &str, run: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
        let dir = run.join("export");
        let specs = |dir: &Path| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        if !dir.join("student.onnx").is_file() || specs(&dir).is_empty() {
            let (run, out) = (run.display().to_string(), dir.display().to_string());
            self.run(
                step,
                &self.tools.bin("trainer")?,
                &["export", "--checkpoint", &run, "--out", &out, "--name", name],
            )?;
        }
        let found = specs(&dir);
        if found.is_empty() {
            bail!("{}: the export wrote no teacher spec", dir.display());
        }
        Ok(found)
    }

    fn pool_dataset(&self) -> String {
        format!("[[dataset]]\nname = \"pool\"\nlocation = {}\n", toml_path(&self.world().join("pool").join("images")))
    }

    /// Steps 3–5 for one seed; returns every model to fine-tune.
    pub fn pretrain(&self, seed: u64) -> anyhow::Result<Vec<Pretrained>> {
        let dir = self.seed_dir(seed);
        let mut models = Vec::new();
        let mut teacher_specs = Vec::new();
        for (task, split, short) in TASKS {
            let run = dir.join("teachers").join(short);
            let data = vec![(split.to_owned(), self.out.join("shards").join(split), vec![task])];
            self.train(&format!("s{seed}-teacher-{short}"), &run, seed, &data, "uniform")?;
            teacher_specs.extend(self.export(
                &format!("s{seed}-export-teacher-{short}"),
                &run,
                &format!("teacher-{short}"),
            )?);
            models.push(Pretrained { name: format!("teacher-{short}"), run: Some(run) });
        }
        let pool = dir.join("pool-labels");
        self.label(&format!("s{seed}-label-pool"), &pool, &teacher_specs, &self.pool_dataset())?;
        for (arm, tasks) in STUDENT_ARMS {
            let run = dir.join("students").join(arm);
            let data = vec![("pool".to_owned(), pool.clone(), tasks.to_vec())];
            self.train(&format!("s{seed}-student-{arm}"), &run, seed, &data, "uniform")?;
            models.push(Pretrained { name: format!("student-{arm}"), run: Some(run) });
        }
        // Table 4's "student as teacher": the first-round MuST student labels the pool again.
        let must = dir.join("students").join("must");
        let round2_specs = self.export(&format!("s{seed}-export-must"), &must, "must-student")?;
        let pool2 = dir.join("pool-labels-round2");
        self.label(&format!("s{seed}-label-pool-round2"), &pool2, &round2_specs, &self.pool_dataset())?;
        let run = dir.join("students").join("round2");
        let all: Vec<&str> = TASKS.iter().map(|t| t.0).collect();
        self.train(&format!("s{seed}-student-round2"), &run, seed, &[("pool".into(), pool2, all)], "uniform")?;
        models.push(Pretrained { name: "student-round2".into(), run: Some(run) });
        // Table 5's supervised multi-task baseline: the labelled splits only, equal per-dataset sampling.
        let run = dir.join("supervised-multitask");
        let data: Vec<_> = TASKS
            .iter()
            .map(|(task, split, _)| (split.to_string(), self.out.join("shards").join(split), vec![*task]))
            .collect();
        self.train(&format!("s{seed}-supervised-multitask"), &run, seed, &data, "per_dataset")?;
        models.push(Pretrained { name: "supervised-multitask".into(), run: Some(run) });
        models.push(Pretrained { name: "random".into(), run: None });
        Ok(models)
    }

    /// Where `model` fine-tuned on downstream task `task` lives.
    pub fn finetune_dir(&self, seed: u64, model: &str, task: &str) -> PathBuf {
        self.seed_dir(seed).join("finetune").join(model).join(task)
    }

    /// Step 6: `model` fine-tuned on downstream `task`; returns the run directory (its `eval.json`).
    pub fn finetune(&self, seed: u64, model: &Pretrained, task: (&str, &str, Option<u32>)) -> anyhow::Result<PathBuf> {
        let s = &self.scale;
        let (dir_name, kind, classes) = task;
        let out = self.finetune_dir(seed, &model.name, dir_name);
        let list = |v: &[f64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let steps = s.finetune_steps.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let init = model.run.as_ref().map(|r| format!("[init]\ncheckpoint = {}\n", toml_path(r))).unwrap_or_default();
        let classes = classes.map(|k| format!("num_classes = {k}\n")).unwrap_or_default();
        let warm = s.finetune_steps.iter().min().copied().unwrap_or(2) / 10;
        let text = format!(
            "out = {}\n\n[task]\nkind = \"{kind}\"\nlocation = {}\n{classes}\n{init}\n{}\n[data]\nimage_size = {}\n\
             batch_size = {}\nseed = {seed}\naugment = {{ scale_min = 0.5, scale_max = 2.0, hflip = true }}\n\n\
             [grid]\nlr = [{}]\nsteps = [{steps}]\n\n[optim]\noptimizer = \"adamw\"\nweight_decay = 1e-4\n\
             warmup_steps = {warm}\n\n[run]\ndevice = \"cpu\"\nthreads = {}\ninit_seed = {seed}\nlog_every = 25\n",
            toml_path(&out),
            toml_path(&self.downstream().join(dir_name)),
            model_section(),
            s.image_size,
            s.batch_size,
            list(&s.finetune_lr),
            s.threads,
        );
        let step = format!("s{seed}-finetune-{}-{dir_name}", model.name);
        let config = self.out.join("configs").join(format!("{step}.toml"));
        self.write(&config, &text)?;
        self.run(&step, &self.tools.bin("trainer")?, &["finetune", "--config", &config.display().to_string()])?;
        Ok(out)
    }
}

/// The architecture of every teacher and student (the paper's teachers and student share it, §3.2).
fn model_section() -> String {
    "[model]\nresnet_depth = 18\nwidth = 0.25\nfpn_channels = 256\ndet_tower_convs = 2\npixel_head_convs = 2\n".into()
}
