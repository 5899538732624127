"""Issue 16 detector diagnostics on the dev presets' data (detlearn helper). Usage:
  python bench/detector_dev_diag.py inputs DATA...        preprocessed tensors + GT boxes: stats, PNGs in /tmp/detlearn
  python bench/detector_dev_diag.py pred DATA CKPT         predictions vs GT (box scaling), F1 at IoU 0.1/0.3/0.5, train vs test
  python bench/detector_dev_diag.py train DATA OUT EPOCHS [OVERRIDES_JSON]  short training: loss log, train/test F1
  python bench/detector_dev_diag.py bn DATA CKPT           train-set F1 with BN running stats vs batch stats
Splits as bench/detector_dev_check.py: permutation seed 16, 150 test, next 80 labeled.

Measured 2026-12-03 (1 thread, cpu preset + the check's overrides: adamw lr 0.002, cosine, warmup 40, batch 4;
/tmp/det/dev-a, /tmp/det/dev-b = 240 slices each of the dev presets' generators; quick77 = `gsal-edge data synth
--n 240 --seed 77`, the default generator, not the quick preset's test split):
* inputs: boxes scale with the resize exactly (x1.333 dev-a 192->256, x0.800 dev-b 320->256, 1.000 quick77);
  window auto puts 12-bit and inverted 16-bit data in [0, 1] (unit mean 0.64 / 0.39 / 0.57, <0.5% clipped);
  GT box vs ring contrast / pixel noise at the model input p50 7.2 dev-a, 5.3 dev-b, 4.6 quick77; box sqrt-area
  at the model input p10/p50 8.0/12.0 dev-a, 5.0/7.6 dev-b, 5.9/10.4 quick77. PNGs: nothing off.
* pred (the previous helper's dev-a model, 400 iters): best IoU of any prediction with each GT p50 0.40 with GT
  as is, 0.00 with GT x1.333 (so no missing rescale); max score per image p50 0.054; F1@0.5 train 0.042 vs
  test 0.036, F1@0.1 0.168 vs 0.167.  bn: train F1 0.053 (running stats) vs 0.052 (batch stats).
* train, 10 epochs = 210 iters, 80 labels: train-set / test F1@0.5 (test mAP@50):
  quick77 0.153 / 0.130 (0.023); dev-a 0.053 / 0.061 (0.007); dev-b 0.064 / 0.079 (0.010);
  dev-a lr 0.006: 0.133 / 0.104 (0.013), lr 0.01: 0.048 / 0.049 (0.005); dev-b lr 0.006: 0.014 / 0.011
  (0.001), so no lr trend (single runs at this budget swing 0.05-0.13); box/rpn sampling batches 16/32: dev-a 0.049 / 0.047, dev-b 0.084 / 0.076.
  loss_classifier stops at 0.13-0.15 from epoch 3 on all three (the RoI head sits at the class prior),
  objectness falls slowly (0.054 -> 0.033).
=> not a preprocessing, box or evaluation bug: the detector does not fit its own 80 training images at this
budget on any of the three (train F1 ~ test F1), so the low dev F1 is under-fitting (optimisation / budget);
the dev sets fit about half as well as quick77 at the same iterations.
"""
import sys
from pathlib import Path


def cmd_inputs(argv):
    import numpy as np
    import torch
    from PIL import Image, ImageDraw
    torch.set_num_threads(1)
    from gsal_edge.data.formats import load_dataset
    from gsal_edge.data.image_io import load_image
    from gsal_edge.data.preprocessing import resolve_window
    from gsal_edge.models import detector_training as dt
    from gsal_edge.models.detector import build_detector
    from gsal_edge.models.detector_config import get_config

    for data in argv:
        ds = load_dataset(data)
        ids = [e.image_id for e in ds.images]
        perm = np.random.default_rng(16).permutation(len(ids))
        pool = [ids[i] for i in perm[150:]]
        window = resolve_window("auto", (load_image(ds.image_path(ds.subset(pool).images[i])) for i in range(0, len(pool), 3)))
        cfg = get_config("cpu")
        model = build_detector(cfg, num_classes=len(ds.classes) + 1, seed=0)
        model.train()
        label_of = {c: i + 1 for i, c in enumerate(ds.classes)}
        cache = dt.SliceCache(ds, window)
        raw0 = load_image(ds.image_path(ds.images[0]))
        print(f"== {data}: raw dtype {raw0.dtype} shape {raw0.shape} min {raw0.min()} max {raw0.max()} window {window}")
        ents = [e for e in ds.images if e.annotations][:40]
        imgs = [torch.from_numpy(cache.get(e))[None] for e in ents]
        tg = [dt.make_target(e, label_of) for e in ents]
        il, tl = model.transform(imgs, [dict(t) for t in tg])
        x = il.tensors
        u = torch.stack([i for i in imgs]) if len({i.shape for i in imgs}) == 1 else None
        print(f"  unit-float [0,1]: mean {u.mean():.3f} std {u.std():.3f} p1 {u.quantile(0.01):.3f} p99 {u.quantile(0.99):.3f} "
              f"frac0 {(u<=0).float().mean():.4f} frac1 {(u>=1).float().mean():.4f}")
        print(f"  model input (normalized) shape {tuple(x.shape)} image_sizes {il.image_sizes[0]} mean {x.mean():.3f} std {x.std():.3f}")
        # scaling of boxes
        sc = []
        cnr = []; sq = []
        for k, (e, t0, t1) in enumerate(zip(ents, tg, tl)):
            b0, b1 = t0["boxes"].numpy(), t1["boxes"].numpy()
            hs, ws = il.image_sizes[k]
            sc.append((b1 / np.maximum(b0, 1e-6))[b0 > 1].mean() if len(b0) else np.nan)
            img = x[k, 0, :hs, :ws].numpy()
            # noise sigma: MAD of a horizontal difference
            d = np.diff(img, axis=1); sig = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)
            for bb in b1:
                x0, y0, x1, y1 = [round(float(v)) for v in bb]
                x0, y0 = max(x0, 0), max(y0, 0); x1, y1 = min(max(x1, x0 + 1), ws), min(max(y1, y0 + 1), hs)
                inner = img[y0:y1, x0:x1]
                m = 4
                ring = img[max(y0 - m, 0):y1 + m, max(x0 - m, 0):x1 + m]
                rmean = (ring.sum() - inner.sum()) / max(ring.size - inner.size, 1)
                cnr.append(abs(inner.mean() - rmean) / sig)
                sq.append(np.sqrt((bb[2] - bb[0]) * (bb[3] - bb[1])))
        print(f"  box scale factor model/orig (mean) {np.nanmean(sc):.3f}  expected {il.image_sizes[0][0] / ents[0].height:.3f}")
        print(f"  box sqrt-area at model input: p10 {np.percentile(sq,10):.1f} p50 {np.median(sq):.1f} p90 {np.percentile(sq,90):.1f}")
        print(f"  box-mean vs ring contrast / pixel noise: p10 {np.percentile(cnr,10):.2f} p50 {np.median(cnr):.2f}")
        # all boxes stats
        allb = np.array([a.box for e in ds.images for a in e.annotations])
        wh = allb[:, 2:] - allb[:, :2]
        print(f"  all boxes (orig px) n {len(allb)} w p50 {np.median(wh[:,0]):.1f} h p50 {np.median(wh[:,1]):.1f} min w {wh[:,0].min()} min h {wh[:,1].min()}; "
              f"x range {allb[:,0].min()}..{allb[:,2].max()} y {allb[:,1].min()}..{allb[:,3].max()}")
        name = data.rstrip('/').split('/')[-1]
        for k in range(4):
            hs, ws = il.image_sizes[k]
            a = x[k, 0, :hs, :ws].numpy(); a = (a - np.percentile(a, 1)) / (np.percentile(a, 99) - np.percentile(a, 1) + 1e-9)
            im = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)).convert("RGB").resize((ws * 2, hs * 2), Image.NEAREST)
            dr = ImageDraw.Draw(im)
            for bb, lab in zip(tl[k]["boxes"].numpy(), tl[k]["labels"].numpy()):
                dr.rectangle([v * 2 for v in bb], outline=(255, 0, 0)); dr.text((bb[0] * 2, bb[1] * 2 - 10), ds.classes[lab - 1], fill=(255, 255, 0))
            im.save(f"/tmp/detlearn/{name}-{k}.png")


def cmd_pred(argv):
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from gsal_edge.data.formats import load_dataset
    from gsal_edge.models import detector_training as dt
    from gsal_edge.models.detection_metrics import box_iou
    from gsal_edge.models.detector import load_checkpoint

    data, ckpt = (['_'] + argv)[1], (['_'] + argv)[2]
    ds = load_dataset(data)
    model, meta = load_checkpoint(ckpt)
    window = tuple(meta["preprocessing"]["window"]) if meta["preprocessing"].get("window") else None
    ids = [e.image_id for e in ds.images]
    perm = np.random.default_rng(16).permutation(len(ids))
    test = [ids[i] for i in perm[:150]]; lab = [ids[i] for i in perm[150:230]]
    print("window", window, "classes", model.classes)
    for name, sub in (("train", lab), ("test", test)):
        for iou in (0.1, 0.3, 0.5):
            m = dt.evaluate_detector(model, ds, sub, window=window, iou_thr=iou)
            print(f"{name} IoU {iou}: f1 {m['f1']:.3f} map {m['map50']:.3f}")
    sub = ds.subset(test)
    preds = dt.predict_dataset(model, sub, window=window)
    s = 256 / sub.images[0].height
    best_raw, best_scaled, best_inv, cen = [], [], [], []
    for e, p in zip(sub.images, preds):
        if not e.annotations or len(p) == 0:
            continue
        g = np.array([a.box for a in e.annotations], np.float32)
        best_raw.append(box_iou(g, p.boxes).max(1))
        best_scaled.append(box_iou(g * s, p.boxes).max(1))
        best_inv.append(box_iou(g / s, p.boxes).max(1))
        # offset of the nearest predicted box centre from each GT centre
        gc = (g[:, :2] + g[:, 2:]) / 2; pc = (p.boxes[:, :2] + p.boxes[:, 2:]) / 2
        d = np.linalg.norm(gc[:, None] - pc[None], axis=-1); cen.append(d.min(1))
    for k, v in (("GT as is", best_raw), ("GT*s", best_scaled), ("GT/s", best_inv)):
        v = np.concatenate(v); print(f"best IoU of any prediction with {k} (s={s:.3f}): p50 {np.median(v):.3f} frac>0.5 {(v > 0.5).mean():.3f}")
    c = np.concatenate(cen); print(f"nearest pred centre dist px: p50 {np.median(c):.1f} p90 {np.percentile(c, 90):.1f}")
    print("n preds per image p50", np.median([len(p) for p in preds]), "max score p50", np.median([p.scores.max() if len(p) else 0 for p in preds]))


def cmd_train(argv):
    import json
    import time

    import numpy as np
    import torch
    torch.set_num_threads(1)
    from gsal_edge.data.formats import load_dataset
    from gsal_edge.data.image_io import load_image
    from gsal_edge.data.preprocessing import resolve_window
    from gsal_edge.models import detector_training as dt
    from gsal_edge.models.detector_config import get_config
    data, out, epochs = (['_'] + argv)[1], (['_'] + argv)[2], int((['_'] + argv)[3])
    ov = json.loads((['_'] + argv)[4]) if len(['_'] + argv) > 4 else {}
    seed = int(ov.pop("seed", 101000))  # {"seed": N} in OVERRIDES_JSON: another detector init / sampling order
    ds = load_dataset(data)
    ids = [e.image_id for e in ds.images]
    perm = np.random.default_rng(16).permutation(len(ids))
    test = [ids[i] for i in perm[:150]]; lab = [ids[i] for i in perm[150:230]]; pool = [ids[i] for i in perm[150:]]
    window = resolve_window("auto", (load_image(ds.image_path(ds.subset(pool).images[i])) for i in range(0, len(pool), 3)))
    base = {"train": {"optimizer": "adamw", "lr": 0.002, "lr_schedule": "cosine", "warmup_iters": 40, "batch_size": 4}}
    for k, v in ov.items():
        if k == "train": base["train"].update(v)
        else: base[k] = v
    cfg = get_config("cpu", base)
    t0 = time.process_time()
    model = dt.train_detector(ds, cfg, epochs=epochs, seed=seed, image_ids=lab, window=window, progress=False, out_dir=out)
    rec = {"data": data, "epochs": epochs, "seed": seed, "ov": ov, "cpu_s": time.process_time() - t0}
    for name, sub in (("train", lab), ("test", test)):
        for iou in (0.1, 0.5):
            m = dt.evaluate_detector(model, ds, sub, window=window, iou_thr=iou)
            rec[f"{name}_f1_iou{iou}"] = round(m["f1"], 4)
    rec["test_map50"] = round(dt.evaluate_detector(model, ds, test, window=window)["map50"], 4)
    log_rows = [json.loads(line) for line in Path(f"{out}/train_log.jsonl").read_text().splitlines()]
    rec["loss"] = [round(r["loss"], 4) for r in log_rows]
    rec["cls"] = [round(r["loss_classifier"], 4) for r in log_rows]
    rec["obj"] = [round(r["loss_objectness"], 4) for r in log_rows]
    print(json.dumps(rec))


def cmd_bn(argv):

    import numpy as np
    import torch
    torch.set_num_threads(1)
    from gsal_edge.data.formats import load_dataset
    from gsal_edge.models import detector_training as dt
    from gsal_edge.models.detector import load_checkpoint
    data, ckpt = (['_'] + argv)[1], (['_'] + argv)[2]
    ds = load_dataset(data); model, meta = load_checkpoint(ckpt); window = tuple(meta["preprocessing"]["window"])
    ids = [e.image_id for e in ds.images]; perm = np.random.default_rng(16).permutation(len(ids)); lab = [ids[i] for i in perm[150:230]]
    print("eval-BN train f1", dt.evaluate_detector(model, ds, lab, window=window)["f1"])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d): print("BN", m.num_features, "running_mean", m.running_mean[:3].tolist(), "var", m.running_var[:3].tolist()); break
    def fwd(self, x):
        return torch.nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
    torch.nn.BatchNorm2d.forward = fwd
    print("batch-stat-BN train f1", dt.evaluate_detector(model, ds, lab, window=window, batch_size=8)["f1"])


if __name__ == "__main__":
    {"inputs": cmd_inputs, "pred": cmd_pred, "train": cmd_train, "bn": cmd_bn}[sys.argv[1]](sys.argv[2:])
