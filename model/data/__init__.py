"""Data for the five tasks: procedural scenes, the PASCAL-Context (PASCAL_MT) loader, transforms.

Every source returns a ``Sample`` of NumPy arrays with these formats (H, W any):

====================  ===================  =====================================================
field                 array                meaning
====================  ===================  =====================================================
``image``             (H, W, 3) uint8      RGB
``semseg``            (H, W) uint8         class ids of the dataset's ``semseg`` classes, 255 ignore
``parts``             (H, W) uint8         ``PARTS_CLASSES`` ids on person pixels, 0 elsewhere;
                                           all 255 when the image has no person (PASCAL rule)
``saliency``          (H, W) uint8         {0, 1}, 255 ignore; or float32 in [0, 1], a teacher's
                                           probability (``--soft-saliency``), 255.0 ignore
``normals``           (H, W, 3) float32    unit vectors, x right, y up, z towards the camera;
                                           (0, 0, 0) where invalid
``normals_valid``     (H, W) bool          where ``normals`` is labelled
``edges``             (H, W) uint8         {0, 1} boundaries, 255 ignore
``name``              str                  image id
====================  ===================  =====================================================

Batches (``model.data.transforms.collate``, torch) hold ``images`` (B, 3, H, W) float32
normalised with ImageNet mean/std, and ``targets``, a dict with one key per requested task plus
``"normals_valid"`` when normals are requested:

- ``semseg``, ``parts``: (B, H, W) int64, 255 = ignore (pass ``ignore_index=255`` to CE);
- ``saliency``, ``edges``: (B, H, W) float32 with values 0.0 / 1.0 (saliency: any value in
  [0, 1] from a soft source), and **255.0 = ignore**
  (no separate mask: a loss must drop pixels where ``target == 255`` before BCE);
- ``normals``: (B, 3, H, W) float32 unit vectors, **255.0 in all three channels where
  invalid** (PASCAL's code; the ``Sample`` itself holds zeros there);
- ``normals_valid`` (key ``NORMALS_VALID``): (B, H, W) bool, the pixels a normals loss uses.

``targets`` therefore has one key that is not a task: iterate over the model's tasks, not
over ``targets``. This module itself imports no torch (nor does ``sources``, which opens a
split of a dataset for training, evaluation and the router figures); ``transforms`` and
``sampling`` (each training step's batches) do.
"""

from model.data.pascal import PascalContext
from model.data.sample import Sample
from model.data.synthetic import SyntheticScenes

NORMALS_VALID = "normals_valid"
"""Key of the normals validity mask in a batch's ``targets``."""

__all__ = ["NORMALS_VALID", "PascalContext", "Sample", "SyntheticScenes"]
