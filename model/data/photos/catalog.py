"""Which files of the packages are photographs, with their licences and what is in them.

Chosen by looking at every image the packages hold: photographs only (no renders, drawings,
logos, screenshots or scans of text). Each entry says, from that look:

- ``people``: ``none`` (nobody in it: a teacher's person there is a false find, the person
  label is 0), ``all`` (everyone in it is someone the pose teacher can find: unfound pixels
  are not a person), ``some`` (people the teachers may miss: a crowd, someone behind a board;
  only found persons are labelled, the rest of the person label is 255), ``agreed`` (people
  near the camera whom pose does not find, e.g. a bust portrait: the person label is where
  the selfie segmenter and ISNet agree, see ``labels.person_map``);
- ``semseg``: what the ``photos`` classes (``model.tasks.PHOTO_CLASSES``) say beyond people:
  ``background`` (no animal, vehicle or food: every non-person pixel is background), a class
  name (the photo's salient object is one: that class where ISNet's saliency >= 0.75,
  unlabelled from 0.25 to 0.75, background below) or ``unknown`` (only person pixels are
  labelled);
- ``group``: near-duplicates (a stereo pair, two exposures, a video's stretch of frames) share
  one, and a group is never split between train and validation.

Licences are the packages' own statements (Debian's copyright files, the wallpapers'
metadata, scikit-image's data docstrings). opencv-doc's sample photos come under the package's
blanket Apache-2.0 / BSD-3-Clause statement; their photographers are not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

PEOPLE = ("none", "all", "some", "agreed")


@dataclass(frozen=True)
class PhotoEntry:
    package: str  # ``packages.PACKAGES`` key
    member: str  # path inside the unpacked package
    licence: str
    author: str
    people: str = "none"
    semseg: str = "background"
    group: str = ""  # "" = its own group

    def __post_init__(self) -> None:
        if self.people not in PEOPLE:
            raise ValueError(f"{self.member}: people must be one of {PEOPLE}")

    @property
    def name(self) -> str:
        return self.member.rsplit("/", 1)[-1].rsplit(".", 1)[0]


_OPENCV_DIR = "usr/share/doc/opencv-doc/examples/data/"
_OPENCV_LICENCE = "Apache-2.0 AND BSD-3-Clause (opencv-doc)"


def _opencv(file: str, semseg: str = "background", people: str = "none", group: str = ""):
    return PhotoEntry(
        "opencv-doc", _OPENCV_DIR + file, _OPENCV_LICENCE, "OpenCV samples", people, semseg, group
    )


def _lomiri(file: str, licence: str, author: str, semseg: str = "background"):
    return PhotoEntry(
        "lomiri-wallpapers-16.04", f"usr/share/backgrounds/{file}", licence, author, semseg=semseg
    )


def _mate(file: str, author: str, semseg: str = "background"):
    return PhotoEntry(
        "mate-backgrounds",
        f"usr/share/backgrounds/mate/nature/{file}",
        "GPL-2+",
        author,
        semseg=semseg,
    )


def _plasma(name: str, size: str, author: str, semseg: str = "background"):
    member = f"usr/share/wallpapers/{name}/contents/images/{size}.jpg"
    return PhotoEntry("plasma-workspace-wallpapers", member, "LGPL-3.0", author, semseg=semseg)


def _skimage(file: str, licence: str, author: str, people: str = "none", semseg="background"):
    return PhotoEntry("scikit-image", f"skimage/data/{file}", licence, author, people, semseg)


CHESSBOARD = [
    _opencv(f"left{i:02d}.jpg", "background", "some", "chessboard")
    for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)
]

PHOTOS: tuple[PhotoEntry, ...] = (
    _opencv("apple.jpg", "food"),
    _opencv("baboon.jpg", "animal"),
    _opencv("board.jpg"),
    _opencv("building.jpg"),
    _opencv("butterfly.jpg", "animal"),
    _opencv("ela_original.jpg"),
    _opencv("fruits.jpg", "unknown"),  # fruit everywhere, salient or not
    _opencv("home.jpg"),
    _opencv("left.jpg", group="books"),
    _opencv("right.jpg", group="books"),
    _opencv("leuvenA.jpg", group="leuven"),
    _opencv("leuvenB.jpg", group="leuven"),
    _opencv("licenseplate_motion.jpg", "unknown"),  # a car's back fills it: barely salient
    _opencv("messi5.jpg", "unknown", "some"),  # a crowd behind the player
    _opencv("orange.jpg", "food"),
    _opencv("squirrel_cls.jpg", "animal"),
    _opencv("stuff.jpg"),
    _opencv("aero1.jpg", group="aero"),
    _opencv("aero3.jpg", group="aero"),
    _opencv("aloeL.jpg", group="aloe"),
    _opencv("aloeR.jpg", group="aloe"),
    _opencv("basketball1.png", people="all", group="basketball"),
    _opencv("basketball2.png", people="all", group="basketball"),
    _opencv("box_in_scene.png"),
    _opencv("chicky_512.png", "animal"),
    _opencv("graf1.png", group="graffiti"),
    _opencv("graf3.png", group="graffiti"),
    _opencv("rubberwhale1.png", group="rubberwhale"),
    _opencv("rubberwhale2.png", group="rubberwhale"),
    _opencv("smarties.png", "food"),
    *CHESSBOARD,
    _lomiri("Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0", "Sander Klootwijk"),
    _lomiri("Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0", "Bolly", "unknown"),  # its stem is salient
    _lomiri("Picture_0B_by_freespace.jpg", "CC-BY-4.0", "Trevor 'Freespace'", "unknown"),
    _lomiri("Picture_1A_by_freespace.jpg", "CC-BY-4.0", "Trevor 'Freespace'"),
    _lomiri("Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0", "Jakub Mede"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich", "unknown"),
    _lomiri("friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi", "animal"),
    _lomiri("greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich"),
    _lomiri("life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("seeding_by_Clements_Engelhardt.jpg", "CC0-1.0", "Clemens Engelhardt"),
    _lomiri("sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
    _mate("Aqua.jpg", "Charles Barbin"),
    _mate("Blinds.jpg", "Lennart Poettering"),
    _mate("Dune.jpg", "Marco Cogoni"),
    _mate("FreshFlower.jpg", "Jens Ansorg"),
    _mate("Garden.jpg", "Charles Barbin"),
    _mate("GreenMeadow.jpg", "Timothy Schellhase"),
    _mate("LadyBird.jpg", "Charles Barbin", "unknown"),  # a small ladybird on a flower
    _mate("RainDrops.jpg", "blackcombwhistler07"),
    _mate("Storm.jpg", "Sergey Nazarov"),
    _mate("TwoWings.jpg", "Charles Barbin", "unknown"),
    _mate("Wood.jpg", "Jean-François Fortin Tam"),
    _mate("YellowFlower.jpg", "Charles Barbin"),
    _plasma("BytheWater", "2560x1600", "Maciej Wiklo"),
    _plasma("ColdRipple", "2560x1600", "Risto Saukonpää"),
    _plasma("ColorfulCups", "2560x1600", "Dmitri Popov"),
    _plasma("DarkestHour", "2560x1600", "Risto Saukonpää"),
    _plasma("EveningGlow", "2560x1600", "Ian Hex", "vehicle"),  # rowing boats
    _plasma("FallenLeaf", "2560x1600", "Martin Klapetek"),
    _plasma("Grey", "2560x1600", "Sigi Sagi"),
    _plasma("Kite", "2560x1600", "Risto Saukonpää"),
    _plasma("OneStandsOut", "2560x1600", "Risto Saukonpää"),
    _plasma("Path", "2560x1600", "Risto Saukonpää"),
    _plasma("summer_1am", "2560x1600", "Risto Saukonpää"),
    _skimage("astronaut.png", "public domain (NASA)", "NASA", "all"),
    _skimage("camera.png", "CC0-1.0", "Lav Varshney", "all"),
    _skimage("chelsea.png", "CC0-1.0", "Stefan van der Walt", semseg="animal"),
    _skimage("coffee.png", "CC0-1.0", "Rachel Michetti", semseg="unknown"),
    _skimage("rocket.jpg", "public domain (SpaceX)", "SpaceX", semseg="unknown"),
    # people as the subject: the registries hold few such photos, and 2 of the 5 photos above
    # with people that pose finds are training photos
    PhotoEntry(
        "ultralytics",
        "ultralytics/assets/bus.jpg",
        "AGPL-3.0 (the package's statement; photographer not recorded)",
        "Ultralytics sample",
        "agreed",  # pose finds one of the four people
        "unknown",  # the bus: a vehicle, but not the only salient object
    ),
    PhotoEntry(
        "ultralytics",
        "ultralytics/assets/zidane.jpg",
        "AGPL-3.0 (the package's statement; photographer not recorded)",
        "Ultralytics sample",
        "agreed",  # pose finds neither man; the blurred crowd behind: neither teacher, so 0
        "unknown",
    ),
    PhotoEntry(
        "matplotlib",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "unstated (matplotlib's sample data)",
        "matplotlib sample data",
        "agreed",  # pose does not find her (a bust portrait)
        "background",  # a portrait before a flag
    ),
    PhotoEntry(
        "insightface",
        "insightface/data/images/t1.jpg",
        "unstated (insightface's sample images)",
        "insightface sample",
        "all",  # six people round a table
        "unknown",  # food and cards on the table
    ),
    *(
        PhotoEntry(
            "face_recognition",
            f"face_recognition-1.3.0/tests/test_images/{file}",
            "unstated (face_recognition's test images)",
            "face_recognition test images",
            people,
            "background",  # offices and a hall: no animal, vehicle or food
        )
        # The package's other test images are crops (obama_partial_face*) or another copy
        # (32bit.png) of these.
        for file, people in (
            ("biden.jpg", "all"),  # a man standing, arms crossed
            ("obama.jpg", "all"),  # a man, arms crossed, before flags
            ("obama2.jpg", "agreed"),  # a man at a lectern (pose finds nobody); one cut by the edge
            ("obama3.jpg", "all"),  # a man standing in a hall
        )
    ),
    _skimage(
        "motorcycle_left.png",
        "unstated (Middlebury 2014 stereo)",
        "Scharstein et al.",
        semseg="vehicle",
    ),
)

VIDEO = PhotoEntry(
    "opencv-doc", _OPENCV_DIR + "vtest.avi", _OPENCV_LICENCE, "OpenCV samples", "all"
)
"""Pedestrians on a campus, 795 frames of 768x576: every ``VIDEO_STEP``-th frame is a photo,
and each ``VIDEO_GROUP`` consecutive frames one group (a stretch of the walk)."""
VIDEO_STEP = 20
VIDEO_GROUP = 100

COMMITTABLE = ("CC0-1.0", "CC-BY-4.0", "public domain (NASA)", "public domain (SpaceX)")
"""Licences under which a photo (or a picture made from it) may be committed to this
repository: the contact sheet shows only these. CC-BY needs the author named beside it."""

STAMP_DIR = "usr/share/tuxpaint/stamps/"
STAMP_CLASSES = {
    "animals/": "animal",
    "vehicles/": "vehicle",
    "military/vehicles/": "vehicle",
    "food/fruit/": "food",
    "food/vegetables/": "food",
    "food/nuts/": "food",
}
"""Tux Paint stamp folders (photographed objects cut out with alpha, GPL-2) -> photo class.
Folders named ``cartoon`` hold drawings and are left out."""
