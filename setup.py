"""The build's one C part: the proxy's per-connection path (src/sockgate/proxy/_lane.c, why
hand-written: its top comment). Everything else is in pyproject.toml. A machine without a C
compiler still installs sockgate: the proxy then relays in Python (proxy/lane.py)."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the lane when a compiler is there; without one, say so and go on."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # (setuptools raises several kinds: any means "no lane")
            print(f"warning: the C relay (sockgate.proxy._lane) was not built: {e}; the proxy relays in Python")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            print(f"warning: {ext.name} was not built: {e}; the proxy relays in Python")


setup(
    ext_modules=[
        Extension(
            "sockgate.proxy._lane",
            ["src/sockgate/proxy/_lane.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
