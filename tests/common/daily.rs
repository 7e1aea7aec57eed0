//! The backfill tests' inputs: eight days of engagement and two neighbour snapshots.

use std::path::{Path, PathBuf};

use super::write;

pub const DAYS: usize = 8; // input days 2026-01-01 .. 2026-01-08
pub const FROM: &str = "2026-01-02";
pub const TO: &str = "2026-01-09";
pub const WINDOW: &str = "3";

pub fn day(i: usize) -> String {
    format!("2026-01-{:02}", i + 1)
}

/// Daily engagement (CSV, one file per day) and two neighbour snapshots (2026-01-01 and -05).
pub fn write_inputs(dir: &Path) {
    for i in 0..DAYS {
        let mut text = String::from("query,product_id,impressions,clicks,adds,purchases\n");
        for q in 0..25 {
            for p in 0..12 {
                if (q + p + i) % 3 == 0 {
                    text.push_str(&format!(
                        "q{q},p{p},{},{},{},{}\n",
                        10 + i + q,
                        (q + p) % 4,
                        q % 2,
                        (p + i) % 2
                    ));
                }
            }
        }
        write(&dir.join(format!("eng/dt={}", day(i))), "part-0.csv", &text);
    }
    for (snapshot, shift) in [(0, 1), (4, 3)] {
        let mut text = String::from("query,neighbour,score\n");
        for q in 0..25 {
            text.push_str(&format!(
                "q{q},q{},0.9\nq{q},q{},0.8\n",
                (q + shift) % 25,
                (q + shift + 2) % 25
            ));
        }
        write(
            &dir.join(format!("nb/dt={}", day(snapshot))),
            "part-0.csv",
            &text,
        );
    }
}

impl super::moto::Moto {
    /// Creates the bucket `q2q` and copies [`write_inputs`]'s `eng/` and `nb/` below `in/`.
    pub fn upload_daily_inputs(&self, data: &Path) {
        self.boto("s3.create_bucket(Bucket='q2q')");
        for file in walk(data) {
            let relative = file
                .strip_prefix(data)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if relative.starts_with("eng/") || relative.starts_with("nb/") {
                self.put(&format!("in/{relative}"), &file);
            }
        }
    }
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
