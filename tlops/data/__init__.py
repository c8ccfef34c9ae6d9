"""The pure data domain: dataset versions, image inputs, the manifest, the split, the
contract (Great Expectations) and the sample data. Talks to no MLflow, git or DVC."""
