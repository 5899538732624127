"""Pixels and data sets: incoming slices and their validation, CT preprocessing and engine inputs,
the one image-file reader, COCO / Pascal VOC / YOLO IO, the synthetic thin-film CT generator, previews.

Numpy, PIL and tifffile only (no torch). Must not import the acquisition math, models, scoring or
benchmark; everything above imports from here.
"""
