"""The DST pipeline: data, DeepSpeed training, tracking, launching and the `dst` command line (see DESIGN.md)."""
import dst  # noqa: F401  first, before anything loads torch: dst's OpenMP spin default (see dst/__init__.py)
