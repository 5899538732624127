"""Load a `trainer export-fiftyone` folder with FiftyOne and print what it holds as JSON (run by the side venv).

Usage: fiftyone_loader.py DIR  (env FIFTYONE_DATABASE_DIR: a temp folder; FIFTYONE_DO_NOT_TRACK=true).
Not a test: tests/trainer/test_fiftyone_export.py runs it with <repo>/.venv-fiftyone/bin/python.
"""

import json
import sys

import fiftyone as fo

ds = fo.Dataset.from_dir(dataset_dir=sys.argv[1], dataset_type=fo.types.FiftyOneDataset)
schema = ds.get_field_schema()
by_acq = ds.sort_by("acquisition", reverse=True).exists("acquisition")
out = {
    "name": ds.name,
    "count": len(ds),
    "fields": sorted(schema),
    "proposals_type": type(schema["proposals"]).__name__ + ":" + str(schema["proposals"].document_type.__name__),
    "tag_counts": ds.count_sample_tags(),
    "info": ds.info,
    "top_by_acquisition": by_acq.limit(3).values("gsal_key"),
    "samples": [
        {
            "key": s.gsal_key,
            "filepath": s.filepath,
            "acquisition": s.acquisition,
            "picked": s.picked,
            "rank": s.rank,
            "round_acquisition": s.round_acquisition,
            "rationale": s.rationale,
            "proposals": [[d.label, d.confidence, d["D"], d.bounding_box] for d in s.proposals.detections],
            "ground_truth": None if s.ground_truth is None else [[d.label, d["concept"]] for d in s.ground_truth.detections],
        }
        for s in ds.sort_by("gsal_key")
    ],
}
print(json.dumps(out))
