//! The confidence-aware blend (`features.blend = "bayes"`) through the real binary: the
//! hand-derived values of fixtures/README.md section 6 in both plans, its parameter checked at
//! the door, and the summary saying which blend ran.

mod common;

use common::*;

/// fixtures/README.md section 6: (query, product, alpha, f) as fractions.
fn hand_worked() -> Vec<(&'static str, &'static str, f64, f64)> {
    let h_red_p1 = 1080.0 / 12010.0;
    vec![
        (
            "red shoes",
            "P1",
            12010.0 / 12040.0,
            (1080.0 + 30.0 * 0.1125) / 12040.0,
        ),
        (
            "crimson shoes",
            "P1",
            40.0 / 70.0,
            (9.0 + 30.0 * h_red_p1) / 70.0,
        ),
        ("crimson shoes", "P2", 0.25, 30.0 * (76.0 / 510.0) / 40.0),
        ("ruby shoes", "P1", 0.25, 30.0 * h_red_p1 / 40.0),
        ("red sneakers", "P4", 60.0 / 90.0, 13.0 / 90.0),
        (
            "red shoez",
            "P1",
            0.25,
            30.0 * ((h_red_p1 + 0.225) / 3.0) / 40.0,
        ),
    ]
}

#[test]
fn bayes_blend_matches_the_hand_worked_values_in_both_plans() {
    let dir = tempfile::tempdir().unwrap();
    let job = root().join("fixtures/tiny/job.toml");
    let paper = read_features(&root().join("fixtures/tiny/expected.csv"));
    for plan in ["merge", "sql"] {
        let out = dir.path().join(format!("{plan}.parquet"));
        let result = run(&[
            "run",
            "--config",
            job.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--plan",
            plan,
            "--blend",
            "bayes",
        ]);
        let err = stderr(&result);
        assert!(result.status.success(), "{err}");
        assert!(
            err.contains("blend bayes (m = 30, kappa = 10)"),
            "the summary names the blend: {err}"
        );
        let rows = read_features(&out);
        assert_eq!(rows.len(), paper.len(), "the blend changes no pair");
        for (query, product, alpha, f) in hand_worked() {
            let row = rows
                .iter()
                .find(|r| r.query == query && r.product_id == product)
                .unwrap();
            assert!(
                close(row.alpha, alpha),
                "{plan} {query},{product}: alpha {}",
                row.alpha
            );
            assert!(
                close(row.f, f),
                "{plan} {query},{product}: f {} vs {f}",
                row.f
            );
        }
        // H, prior and the counts are the paper's
        for (b, p) in rows.iter().zip(&paper) {
            assert_eq!((&b.query, &b.product_id), (&p.query, &p.product_id));
            assert!(close(b.h, p.h) && close(b.prior, p.prior));
            assert_eq!(
                (b.impressions, b.n_neighbours, b.n_contributing),
                (p.impressions, p.n_neighbours, p.n_contributing)
            );
        }
    }
}

#[test]
fn pseudo_impressions_and_blend_are_checked_at_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let job = root().join("fixtures/tiny/job.toml");
    let out = dir.path().join("f.parquet");
    for m in ["0", "-1", "nan", "inf"] {
        let result = run(&[
            "run",
            "--config",
            job.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--blend",
            "bayes",
            "--pseudo-impressions",
            m,
        ]);
        let err = stderr(&result);
        assert_eq!(result.status.code(), Some(2), "m = {m}: {err}");
        assert!(err.contains("pseudo_impressions"), "{err}");
    }
    let result = run(&[
        "run",
        "--config",
        job.to_str().unwrap(),
        "--blend",
        "mystery",
    ]);
    assert_eq!(result.status.code(), Some(2));
    assert!(stderr(&result).contains("paper"), "{}", stderr(&result));
    // the config keys, as a job file sets them
    let file = dir.path().join("job.toml");
    let tiny = root().join("fixtures/tiny");
    std::fs::write(
        &file,
        format!(
            "engagement = {:?}\nneighbours = {:?}\n[features]\nmin_score = 0.1\nblend = \"bayes\"\npseudo_impressions = 10\n",
            tiny.join("engagement.csv"),
            tiny.join("neighbours.csv")
        ),
    )
    .unwrap();
    let result = run(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let rows = read_features(&out);
    let p2 = rows
        .iter()
        .find(|r| r.query == "crimson shoes" && r.product_id == "P2")
        .unwrap();
    assert!(
        close(p2.alpha, 0.5),
        "kappa / (kappa + m) = 10/20: {}",
        p2.alpha
    );
}

/// The SQL shell recomputes the bayes F from the stage views and the UDFs, equal to `features`.
#[test]
fn the_shell_recomputes_bayes_f_with_the_udfs() {
    let job = root().join("fixtures/tiny/job.toml");
    let out = run(&[
        "sql",
        "--config",
        job.to_str().unwrap(),
        "--blend",
        "bayes",
        "--pseudo-impressions",
        "30",
        "--format",
        "csv",
        "-c",
        "SELECT count(*) AS differ FROM features \
         WHERE abs(f - q2q_blend(h, prior, q2q_confidence('bayes', impressions, 0, 10000, 10, 30), 1.0)) > 1e-12 \
            OR abs(alpha - (impressions + 10.0) / (impressions + 40.0)) > 1e-12",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "differ\n0\n");
}
