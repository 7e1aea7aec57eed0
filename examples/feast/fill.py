"""The one fill rule for pairs without a feature row, shared by training and serving.

`q2q-prior export lightgbm` writes 0 for every engine feature of a labelled pair absent from the
feature table, and has_prior = 1 exactly when n_contributing > 0. Feast returns nulls for such a
pair (offline, and online once it has no row): apply the same rule to what Feast returns before
scoring, so that the ranker sees at serving time what it saw in training.
"""

FEATURES = ["h", "prior", "alpha", "f", "impressions", "n_neighbours", "n_contributing"]


def fill_absent(df, prefix=""):
    """Nulls of the q2q_prior features -> 0, plus has_prior; `prefix` as Feast names the columns
    (e.g. "q2q_prior__" with full_feature_names=True)."""
    columns = [prefix + name for name in FEATURES]
    df = df.copy()
    df[columns] = df[columns].fillna(0)
    for name in ["impressions", "n_neighbours", "n_contributing"]:
        df[prefix + name] = df[prefix + name].astype("int64")
    df[prefix + "has_prior"] = (df[prefix + "n_contributing"] > 0).astype("int64")
    return df
