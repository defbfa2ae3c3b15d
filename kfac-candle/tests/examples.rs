//! Smoke runs of the examples: two steps each, through their own code.

#[allow(dead_code)]
#[path = "../examples/mlp.rs"]
mod mlp;

#[allow(dead_code)]
#[path = "../examples/mnist_cnn.rs"]
mod mnist_cnn;

#[test]
fn mlp_runs_two_steps() {
    let (kfac, adam) = mlp::run(2).unwrap();
    assert!(kfac.is_finite() && adam.is_finite());
}

#[test]
fn mnist_cnn_runs_two_steps() {
    let out = std::env::temp_dir().join(format!("kfac-candle-smoke-{}", std::process::id()));
    let args: Vec<String> = ["--steps", "2", "--batch", "32", "--out"].iter().map(|s| s.to_string()).collect();
    let mut args = args;
    args.push(out.to_string_lossy().into_owned());
    let o = mnist_cnn::Options::parse(&args).unwrap();
    let table = mnist_cnn::run(&o).unwrap();
    for name in ["adamw", "kfac", "ekfac", "kfac-adaptive", "ekfac-adaptive"] {
        assert!(table.contains(&format!("| {name} |")), "{name} missing from\n{table}");
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("mnist_cnn.json")).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 5);
    for png in ["mnist_cnn_steps.png", "mnist_cnn_seconds.png"] {
        assert!(out.join(png).metadata().unwrap().len() > 0);
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn mnist_cnn_refuses_bad_arguments() {
    let parse = |a: &[&str]| mnist_cnn::Options::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(parse(&["--steps", "x"]).is_err());
    assert!(parse(&["--steps", "0"]).is_err());
    assert!(parse(&["--bogus"]).is_err());
    assert!(parse(&["--steps"]).is_err());
}
