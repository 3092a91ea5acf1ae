"""Locate Java and the jars that pycocoevalcap ships (Stanford PTBTokenizer, METEOR 1.5).

pycocoevalcap installs its jars as package data beside its Python files; we run the same jars with
the machine's ``java`` so that tokenisation and METEOR are the ones the COCO caption tables used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

PTB_JAR = "stanford-corenlp-3.4.1.jar"
METEOR_JAR = "meteor-1.5.jar"


def java_executable() -> str | None:
    """Path of ``java`` (``$JAVA_HOME/bin/java`` first, then ``PATH``), or None when absent."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("java")


def pycocoevalcap_file(module: str, filename: str) -> str:
    """Path of ``filename`` in the folder of ``pycocoevalcap.<module>`` (e.g. the tokenizer's jar)."""
    spec = importlib.util.find_spec(f"pycocoevalcap.{module}")
    if spec is None or spec.origin is None:
        raise ImportError(f"pycocoevalcap.{module} not found: install pycocoevalcap (pip install pycocoevalcap)")
    path = os.path.join(os.path.dirname(spec.origin), filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: pycocoevalcap is installed but {filename} is missing from it")
    return path


def require_java(what: str) -> str:
    java = java_executable()
    if java is None:
        raise RuntimeError(f"{what} needs Java 1.8+ (`java` on PATH or $JAVA_HOME); none was found")
    return java
