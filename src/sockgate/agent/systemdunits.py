"""systemd's unit loader, as far as the agent needs it: which file, with which drop-ins, a
``.socket`` or ``.service`` name loads (systemd.unit(5); systemd's ``unit_file_build_name_map``,
``unit_file_find_dropin_paths``/``unit_file_find_dirs`` and ``conf_files_list``).

* The unit directories are read in systemd's order; the first one having a name wins it,
  whatever the entry is. A regular file is the unit. A symbolic link to ``/dev/null`` (any
  character device), or an empty file, masks the name — and so every lower copy. A link to a
  unit of another name in a unit directory is an alias: the name loads its target's unit (by
  name), under the target's name, and the alias's drop-ins apply to it. A link out of the unit
  directories is a linked unit file, loaded under the link's name with that name's drop-ins.
* Drop-in directories, for the unit's name and then each alias, in every unit directory in
  turn: ``NAME.d``, the template's, each dash prefix's (with the instance kept, and its
  template); then the type's (``socket.d``) in every unit directory. Across them, a ``.conf``
  name is taken from the first directory having it (a mask there removes it), hidden names are
  skipped, and the files apply in the byte order of their names.
* Enabled instances of template sockets (``demo@2424.socket``) are the links in the unit
  directories' ``*.wants/``, ``*.requires/`` and ``*.upholds/``.

Anything that cannot be settled exactly — a unit or drop-in that exists but cannot be read (its
permissions, its size, the read budget, a FIFO or device that is no mask, its decoding), an
entry of an odd kind, an alias loop, an instance-specific directory for a connection's instance
— raises ``Unsettled`` with the reason: that unit's launches are unknown, never guessed. Only a
name gone between the listing and the read is skipped (ENOENT), as systemd skips it.

Every listing and read goes through the agent's reader (``agent/files.WatchingReader``), so the
directories are watched; a unit directory that does not exist is awaited (its creation
reloads).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from dataclasses import dataclass

from sockgate.agent.files import WatchingReader
from sockgate.agent.unitsyntax import (ANY_INSTANCE, Assignments, Masked, NotFound, UnitName, Unsettled, dropin_names,
                                       parse_config, unit_name)
from sockgate.errors import SockgateError

_WANTS = (".wants", ".requires", ".upholds")
_MAX_HOPS = 16
_MAX_ALIASES = 4  # their order is systemd's hash order: every order is tried up to this many


@dataclass(frozen=True)
class Loaded:
    """A unit as systemd loads it: its name (``u->id``), its file, and its settings with its
    drop-ins' in the order they apply."""

    name: UnitName
    path: str
    settings: Assignments


class UnitLoader:
    """systemd's units in ``dirs`` (the search path, in order), read through ``reader``."""

    def __init__(self, dirs: tuple[str, ...], reader: WatchingReader) -> None:
        self.dirs = tuple(os.path.normpath(d) for d in dirs)
        self.reader = reader
        self.listing: dict[str, dict[str, str]] = {}  # dir → name → kind
        self.names: dict[str, str] = {}  # unit name → the first directory having it
        for d in self.dirs:
            self.listing[d] = self._entries(d)
            for n in sorted(self.listing[d]):
                if unit_name(n) is not None:  # hidden names too: systemd loads them
                    self.names.setdefault(n, d)
        self._aliases: dict[str, set[str]] | None = None
        self._broken: dict[str, str] = {}  # a link that resolves to nothing → its target's name
        self._listed: dict[str, dict[str, str]] = {}  # drop-in directories listed so far

    def _entries(self, d: str) -> dict[str, str]:
        try:
            return dict(self.reader.entries(d))
        except FileNotFoundError:
            self.reader.await_path(d)
            return {}
        except (OSError, SockgateError) as e:
            raise Unsettled(f"unit directory {d} cannot be listed: {_why(e)}") from e

    # -- which units ---------------------------------------------------------------------------

    def sockets(self) -> list[str]:
        """The socket names to load: every socket unit name in the directories but an alias
        (its target is the unit, loaded once), then the enabled instances of templates."""
        aliases = {a for names in self._alias_map().values() for a in names}
        out = [n for n in sorted(self.names)
               if (u := unit_name(n)) and u.kind == "socket" and u.instance is None and n not in aliases]
        for d in self.dirs:
            for n, kind in sorted(self.listing[d].items()):
                if n.endswith(_WANTS) and kind in ("dir", "link") and not n.startswith("."):
                    out += [w for w in sorted(self._entries(os.path.join(d, n)))
                            if (u := unit_name(w)) and u.kind == "socket" and u.instance]
        return list(dict.fromkeys(out))

    # -- one unit --------------------------------------------------------------------------------

    def load(self, requested: UnitName) -> Loaded:
        """The unit ``requested`` loads (an instance: its own file, else its template's);
        raises ``Masked``, ``Unsettled``."""
        path, fragment = self._fragment(requested)
        name = fragment if requested.instance is None else UnitName(fragment.prefix, requested.instance, fragment.kind)
        text = self._read_unit(path)
        settings = parse_config(text, path)
        for p in self._dropins(name):
            settings += parse_config(self._read_dropin(p), p)
        return Loaded(name, path, settings)

    def _fragment(self, requested: UnitName) -> tuple[str, UnitName]:
        """The file of ``requested`` and the name it is loaded under."""
        if requested.instance == ANY_INSTANCE:
            self._no_instance_files(requested)
            path, fragment = self._resolve(str(requested.template()), 0)
        elif str(requested) in self.names or not requested.instance:
            path, fragment = self._resolve(str(requested), 0)
        else:
            path, fragment = self._resolve(str(requested.template()), 0)
        return path, fragment

    def _no_instance_files(self, u: UnitName) -> None:
        for d in self.dirs:
            for n in self.listing[d]:
                x = unit_name(n.removesuffix(".d"))
                if x is not None and x.prefix == u.prefix and x.kind == u.kind and x.instance:
                    raise Unsettled(f"{os.path.join(d, n)}: a unit for some of {u.prefix}@.{u.kind}'s instances")

    def _resolve(self, name: str, hops: int) -> tuple[str, UnitName]:
        """The file the name map gives ``name`` and the unit name it loads as (aliases
        followed by name); raises ``Masked`` or ``Unsettled`` (not found included)."""
        if hops > _MAX_HOPS:
            raise Unsettled(f"unit {name}: too many alias links")
        d = self.names.get(name)
        u = unit_name(name)
        if d is None or u is None:
            raise NotFound(f"unit {name} not found")
        path = os.path.join(d, name)
        kind = self.listing[d][name]
        if kind == "file":
            return path, u
        if kind != "link":
            raise Unsettled(f"unit {path} is not a file")
        try:
            target = os.path.normpath(os.path.join(d, os.readlink(path)))
        except OSError as e:
            raise Unsettled(f"unit {path}: {_why(e)}") from e
        base = os.path.basename(target)
        if target == "/dev/null" or _is_char_device(target):
            raise Masked(path)
        t = unit_name(base)
        if base == name or (os.path.dirname(target) not in self.dirs and t is not None and t.kind == u.kind
                            and (t.instance is None) == (u.instance is None)):
            return target, u  # a linked unit file: loaded under the link's name, with its drop-ins
        if os.path.dirname(target) not in self.dirs or t is None or t.kind != u.kind \
                or (t.instance is None) != (u.instance is None) or (t.instance or u.instance):
            raise Unsettled(f"unit {path}: a link to {target} is no alias read here")
        return self._resolve(base, hops + 1)

    def _alias_map(self) -> dict[str, set[str]]:
        """Each unit name → the names that are aliases of it (links resolving to it)."""
        if self._aliases is None:
            self._aliases = {}
            for n, d in self.names.items():
                if self.listing[d][n] != "link":
                    continue
                try:
                    _, f = self._resolve(n, 0)
                except Masked:
                    continue
                except Unsettled as e:
                    self._broken[n] = str(e)
                    continue
                if str(f) != n:
                    self._aliases.setdefault(str(f), set()).add(n)
        return self._aliases

    def aliases(self, name: UnitName) -> list[UnitName]:
        """The names that are aliases of ``name``'s unit (an instance: its template's
        aliases, with its instance)."""
        key = str(name if name.instance is None else name.template())
        found = self._alias_map().get(key, set())
        for n, why in self._broken.items():
            if _link_base(os.path.join(self.names[n], n)) == key:
                raise Unsettled(why)
        out = [unit_name(a) for a in sorted(found)]
        return [UnitName(a.prefix, name.instance, a.kind) for a in out if a is not None]

    # -- drop-ins ------------------------------------------------------------------------------

    def _dropins(self, name: UnitName) -> list[str]:
        """The drop-in files of the unit loaded as ``name``, in the order they apply."""
        aliases = self.aliases(name)
        if len(aliases) > _MAX_ALIASES:
            raise Unsettled(f"unit {name}: more than {_MAX_ALIASES} aliases")
        orders = {tuple(self._conf_files([name, *order])) for order in itertools.permutations(aliases)}
        if len(orders) != 1:
            raise Unsettled(f"unit {name}: its aliases' drop-ins apply in an order systemd does not fix")
        return list(orders.pop())

    def _conf_files(self, names: list[UnitName]) -> list[str]:
        dirs: list[str] = []
        for n in names:
            for d in self.dirs:
                for sub in dropin_names(n):
                    dirs += self._dropin_dir(d, f"{sub}.d")
        for d in self.dirs:
            dirs += self._dropin_dir(d, f"{names[0].kind}.d")
        chosen: dict[str, str] = {}
        for d in dirs:
            if d not in self._listed:
                self._listed[d] = self._entries(d)
            listed = self._listed[d]
            for f in listed:
                if f.endswith(".conf") and not f.startswith("."):
                    chosen.setdefault(f, os.path.join(d, f))
        return [chosen[n] for n in sorted(chosen, key=lambda n: n.encode("utf-8", "surrogateescape"))]

    def _dropin_dir(self, d: str, sub: str) -> list[str]:
        """The directory ``d/sub`` resolved, when it exists (``unit_file_find_dir``)."""
        if ANY_INSTANCE in sub:
            stem = sub[:sub.index("@") + 1]
            hit = [n for n in self.listing[d] if n.startswith(stem) and n.endswith(sub[sub.index(ANY_INSTANCE) + 1:])
                   and not n.startswith(stem + ".")]
            if hit:
                raise Unsettled(f"{os.path.join(d, hit[0])}: drop-ins for some of the instances only")
            return []
        if sub not in self.listing[d]:
            return []
        path = os.path.join(d, sub)
        resolved = os.path.realpath(path)
        if not os.path.exists(resolved):
            self.reader.await_path(resolved)
            return []  # a dangling link: no directory (yet)
        if not os.path.isdir(resolved):
            raise Unsettled(f"drop-in directory {path} is not a directory")
        return [resolved]

    # -- reading -------------------------------------------------------------------------------

    def _read_unit(self, path: str) -> str:
        text = self._read(path, "unit file")
        if text is None or not text:
            raise Masked(path)
        return text

    def _read_dropin(self, path: str) -> str:
        text = self._read(path, "drop-in")
        return text or ""

    def _read(self, path: str, what: str) -> str | None:
        """The text of ``path``; None for a mask (a character device); raises ``Unsettled``
        for anything unreadable, ``Unsettled`` too for a unit file gone (a drop-in gone: "")."""
        try:
            st = os.stat(path)
            if stat.S_ISCHR(st.st_mode):
                if what == "drop-in" and st.st_rdev != os.makedev(1, 3):
                    raise Unsettled(f"{what} {path} is a device")
                return None
            return self.reader(path)
        except FileNotFoundError:
            if what == "drop-in":
                return ""
            raise NotFound(f"{what} {path} not found") from None
        except (OSError, SockgateError) as e:
            raise Unsettled(f"{what} {path} unreadable: {_why(e)}") from e


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _link_base(path: str) -> str:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror if e.errno != errno.EFBIG else str(e.strerror)
    return str(e)
