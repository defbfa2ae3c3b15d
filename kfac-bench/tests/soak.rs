//! A short soak: EKFAC with damping 1e-8 stays finite, and the health
//! report is filled in. (`cargo xtask bench` runs the 10,000-step one.)

use kfac_bench::soak::{self, SoakConfig};

#[test]
fn a_short_soak_stays_finite_and_reports_its_health() {
    let dir = std::env::temp_dir().join(format!("kfac-soak-{}", std::process::id()));
    let config = SoakConfig { steps: 400, ..Default::default() };
    let r = soak::run(&config, &dir).unwrap();
    assert!(r.failures().is_empty(), "{:?}", r.failures());
    assert_eq!(r.non_finite_losses, 0);
    assert!(r.weights_finite && r.final_loss.is_finite());
    assert_eq!(r.health.len(), 3);
    for h in &r.health {
        assert_eq!(h.damping, Some(1e-8));
        assert_eq!(h.refreshes, 20, "{h:?}");
        let (lo, hi) = (h.min_eigenvalue.unwrap(), h.max_eigenvalue.unwrap());
        assert!(0.0 <= lo && lo <= hi && hi.is_finite(), "{h:?}");
        assert!(h.condition.unwrap() >= 1.0);
    }
    soak::write(&dir, &r).unwrap();
    let back: soak::SoakResult =
        serde_json::from_str(&std::fs::read_to_string(dir.join("soak.json")).unwrap()).unwrap();
    assert_eq!(back.non_finite_losses, r.non_finite_losses);
    assert!(std::fs::read_to_string(dir.join("soak.md")).unwrap().contains("| layer0 |"));
    std::fs::remove_dir_all(&dir).unwrap();
}
