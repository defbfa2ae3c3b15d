//! The criterion summary reads criterion's output layout.

use kfac_bench::criterion_summary;

#[test]
fn collects_medians_and_rates_from_criterion_output() {
    let root = std::env::temp_dir().join(format!("kfac-criterion-test-{}", std::process::id()));
    let dir = root.join("criterion/eigh/faer/256/new");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("benchmark.json"),
        r#"{"group_id":"eigh","function_id":"faer","value_str":"256","throughput":{"Elements":2000000},"full_id":"eigh/faer/256","directory_name":"eigh/faer/256","title":"eigh/faer/256"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("estimates.json"),
        r#"{"mean":{"point_estimate":2100000.0},"median":{"point_estimate":2000000.0},"std_dev":{"point_estimate":1.0}}"#,
    )
    .unwrap();
    // The "base" copy criterion keeps of an earlier run is ignored.
    let base = root.join("criterion/eigh/faer/256/base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("estimates.json"), "{}").unwrap();
    let rows = criterion_summary::collect(&root.join("criterion")).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.group.as_str(), r.function.as_str(), r.value.as_str()), ("eigh", "faer", "256"));
    assert!((r.median_ms - 2.0).abs() < 1e-12 && (r.mean_ms - 2.1).abs() < 1e-12);
    assert!((r.giga_per_second.unwrap() - 1.0).abs() < 1e-12);
    let n = criterion_summary::write(&root.join("criterion"), &root.join("out")).unwrap();
    assert_eq!(n, 1);
    let md = std::fs::read_to_string(root.join("out/criterion.md")).unwrap();
    assert!(md.contains("| eigh | faer | 256 | 2.000 | 2.100 | 1.0 |"), "{md}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_missing_folder_gives_an_empty_summary() {
    let rows = criterion_summary::collect(std::path::Path::new("/nonexistent/criterion")).unwrap();
    assert!(rows.is_empty());
}
