"""Link installed distributions, and every distribution they need, from this interpreter's
site-packages into another site-packages folder; print them as pip constraints (name==version).

Used by lowest_versions.sh to reuse the installed torch (with its CUDA libraries, 5 GB and four
minutes to install again) in a venv that sees nothing else of this interpreter's packages.

    python3 .ci/link_installed.py SITE_PACKAGES torch torchvision --except numpy pillow
"""

import argparse
import importlib.metadata as metadata
import os
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def needed(names: list[str], excepted: set[str]) -> dict[str, metadata.Distribution]:
    """{name: distribution} of names and, recursively, what they require on this platform (with
    the extras asked for), leaving out the excepted names."""
    found, seen, wanted = {}, set(), [(name, "") for name in names]
    while wanted:
        name, extra = wanted.pop()
        key = canonicalize_name(name)
        if key in excepted or (key, extra) in seen:
            continue
        seen.add((key, extra))
        found[key] = metadata.distribution(name)
        for line in found[key].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                wanted += [(requirement.name, asked) for asked in ("", *requirement.extras)]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="the site-packages folder to link into")
    parser.add_argument("names", nargs="+")
    parser.add_argument("--except", dest="excepted", nargs="*", default=[])
    args = parser.parse_args()
    excepted = {canonicalize_name(name) for name in args.excepted}
    for distribution in needed(args.names, excepted).values():
        tops = {Path(file).parts[0] for file in distribution.files or []}
        for top in sorted(tops - {".."}):  # "..": scripts in bin/, not needed
            link = args.target / top
            if not link.exists():
                os.symlink(distribution.locate_file(top), link)
        print(f"{distribution.metadata['Name']}=={distribution.version}")


if __name__ == "__main__":
    main()
