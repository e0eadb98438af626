"""A dataset's files, in a folder or in a .tar.gz as downloaded, read by their relative
paths, with one clear ``DataError`` for a file that cannot be read."""

import os
import tarfile

from cmxl_keras.errors import DataError


class Files:
    """Read access to the files of a folder or of a .tar.gz, by relative path."""

    def __init__(self, root):
        self.root = root
        self.archive = None
        if os.path.isfile(root):
            try:
                self.archive = tarfile.open(root)
            except (tarfile.TarError, OSError) as error:
                raise DataError(
                    f"--data-dir {root!r} is a file but not a readable .tar.gz archive "
                    f"({error}). Point --data-dir at the official CIFAR archive "
                    f"(cifar-10-python.tar.gz, cifar-10-binary.tar.gz, "
                    f"cifar-100-python.tar.gz, cifar-100-binary.tar.gz) or at the folder it "
                    f"extracts to.") from None
            self.members = {m.name.lstrip("./"): m for m in self.archive.getmembers()
                            if m.isfile()}
            self._contents = None  # every file's bytes, read in one pass on the first read
            self.dirs = {os.path.dirname(n) for n in self.members}
            for name in list(self.dirs):  # every ancestor is a folder too
                while name:
                    name = os.path.dirname(name)
                    self.dirs.add(name)

    def describe(self, rel):
        return f"{self.root}:{rel}" if self.archive else os.path.join(self.root, rel)

    def isdir(self, rel):
        if self.archive:
            return rel.strip("/") in self.dirs
        return os.path.isdir(os.path.join(self.root, rel))

    def exists(self, rel):
        if self.archive:
            return rel in self.members
        return os.path.isfile(os.path.join(self.root, rel))

    def listdir(self, rel):
        if self.archive:
            prefix = rel.strip("/") + "/" if rel.strip("/") else ""
            names = {n[len(prefix):].split("/")[0] for n in self.members
                     if n.startswith(prefix)}
            names |= {d[len(prefix):].split("/")[0] for d in self.dirs
                      if d.startswith(prefix) and d != rel.strip("/")}
            return sorted(n for n in names if n)
        return sorted(os.listdir(os.path.join(self.root, rel)))

    def _read_all(self):
        """Every file of the archive, read in one pass in the archive's order. Why: a
        .tar.gz cannot seek back, so each member read out of its order (a reader goes
        class by class, name by name) decompresses the archive again from its start:
        50,000 images would decompress it 50,000 times."""
        if self._contents is None:
            self._contents = {}
            for member in self.archive:
                if member.isfile():
                    self._contents[member.name.lstrip("./")] = self.archive.extractfile(
                        member).read()
        return self._contents

    def read(self, rel):
        try:
            if self.archive:
                return self._read_all()[rel]
            with open(os.path.join(self.root, rel), "rb") as f:
                return f.read()
        except (OSError, tarfile.TarError, EOFError, KeyError) as error:
            raise DataError(f"cannot read {self.describe(rel)!r} ({error}); the file is "
                            f"damaged or unreadable: download or prepare it again.") from None
