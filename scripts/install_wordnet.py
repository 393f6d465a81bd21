"""Install the WordNet database for nltk into the virtual environment (offline concept source).

No PyPI package ships WordNet's data. Debian's ``wordnet-base`` + ``wordnet-sense-index`` do;
nltk will not read /usr/share/wordnet directly (nor through symlinks), so the files are copied
into ``<venv>/nltk_data/corpora/wordnet`` (a folder nltk searches) and the ``lexnames`` file
that Debian omits is generated (lexnames(5WN)). Runs apt-get when it is available and we are root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path("/usr/share/wordnet")
TARGET = Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet"
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
APT_PACKAGES = ["wordnet-base", "wordnet-sense-index"]


def _apt_install() -> None:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return
    print(f"[setup] apt-get install {' '.join(APT_PACKAGES)}")
    subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", *APT_PACKAGES], check=False, stdout=subprocess.DEVNULL)


def main() -> int:
    if (TARGET / "lexnames").is_file() and (TARGET / "data.noun").is_file():
        return 0
    if not (SOURCE / "data.noun").is_file():
        _apt_install()
    if not (SOURCE / "data.noun").is_file():
        print(f"[setup] {SOURCE} has no WordNet database; run: apt-get install {' '.join(APT_PACKAGES)}")
        return 1
    TARGET.mkdir(parents=True, exist_ok=True)
    for path in SOURCE.iterdir():
        if path.is_file():
            shutil.copyfile(path, TARGET / path.name)
    lines = [f"{i:02d}\t{name}\t{SYNTACTIC_CATEGORY[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
    (TARGET / "lexnames").write_text("\n".join(lines) + "\n")
    print(f"[setup] WordNet installed for nltk in {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
