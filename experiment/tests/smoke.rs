//! `make experiment EXPERIMENT_SCALE=smoke`'s code path end to end: every arm of Tables 3–5 is pre-trained
//! (teachers trained and exported by the project itself, the pool labelled with them, students, the
//! second round, the supervised baseline), fine-tuned on every downstream task, and reported. Asserts that
//! the report is complete, not that a trend holds (the smoke scale is far too small for one).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_smoke_scale_reports_every_arm_on_every_downstream_task() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_experiment"));
    let bin_dir = exe.parent().unwrap().to_owned();
    for tool in ["world", "labeler", "trainer"] {
        assert!(
            bin_dir.join(tool).is_file(),
            "{} is missing: run the workspace's tests (`make test`), which build every binary",
            bin_dir.join(tool).display()
        );
    }
    let dir = tempfile::TempDir::new().unwrap();
    let out = dir.path().join("exp");
    let run = || Command::new(&exe).args(["--scale", "smoke", "--out"]).arg(&out).output().unwrap();
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&first.stderr));

    let results = std::fs::read_to_string(out.join("results.json")).unwrap();
    let rows: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let models = [
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
    let tasks = ["normals", "segmentation", "depth", "nearest_object"];
    assert_eq!(rows.len(), models.len() * tasks.len(), "{results}");
    for model in models {
        for task in tasks {
            let row = rows.iter().find(|r| r["model"] == model && r["task"] == task);
            let value = row.and_then(|r| r["value"].as_f64());
            assert!(value.is_some_and(|v| (0.0..=1.0).contains(&v)), "{model} on {task}: {row:?}");
            if task == "normals" {
                let degrees = row.and_then(|r| r["mean_degrees"].as_f64());
                assert!(degrees.is_some_and(|d| (0.0..=180.0).contains(&d)), "{model}: {row:?}");
            }
        }
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in ["Table 3", "Table 4", "Table 5", "MuST", "round 2", "supervised multi-task", "random init", " ± "] {
        assert!(report.contains(needle), "report.md lacks {needle:?}:\n{report}");
    }
    for chart in ["table3.svg", "table4.svg", "table5.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<rect"), "{chart} has no bars");
    }

    // A second run finds every step done and reports the same numbers.
    let second = run();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(std::fs::read_to_string(out.join("results.json")).unwrap(), results);
}
