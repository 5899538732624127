"""Synthetic thin-film CT slices: the product's embedded default data set.

A slice is a cross-section of a layered film on a substrate (air on top, horizontal layers of
different density, substrate below), seen through a CT system: Gaussian PSF blur, correlated
noise, ring and streak artifacts, slow spatial and temporal density drift, 16-bit counts.

Defects (labeled, one COCO category each) are small and low contrast; their contrast is drawn
in units of the slice's noise sigma so it stays "a few sigma" whatever the product:

=============  ========  ===========================================================
class          polarity  shape
=============  ========  ===========================================================
void           dark      round: filled ellipse
inclusion      bright    compact: irregular blob
petal          bright    u_shaped: tapering crescent arc
drill_hole     dark      linear: straight channel from the top surface, sharp edges
crack          dark      jagged: thin zig-zag line
=============  ========  ===========================================================

Benign look-alikes (NOT labeled, recorded per image): dust specks (tiny dots, mostly bright),
layer wobble (a local bump of an interface) and scratches (long, faint, perfectly straight).

Every knob lives in :class:`~gsal_edge.data.synthetic.config.SynthConfig` (``config.py``;
``configs/synth_default.yaml`` mirrors its defaults); ``render.py`` draws the pieces of a slice and
``generator.py`` puts them together and writes data sets.
"""
