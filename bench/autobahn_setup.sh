#!/bin/sh
# Set up the Autobahn WebSocket test suite (Python 2 only) for bench/autobahn.py.
# Usage, from anywhere:
#
#     sh bench/autobahn_setup.sh DIR        # then, from the repository root:
#     nice -n 19 python bench/autobahn.py --suite DIR
#
# With a CPython 2.7 ($PYTHON2, else python2.7 or python2 on PATH, else pyenv's
# ~/.pyenv/versions/2.7.*), DIR becomes a virtualenv of it holding the suite and the
# last versions of its dependencies that support Python 2.7, all pinned below; the
# suite's code is not changed (pyOpenSSL and the C accelerators wsaccel and ujson are
# installed when they can be, and only wss:// needs pyOpenSSL).
#
# Without one, the suite is set up for Debian's jython package (apt-get install -y
# jython; Jython 2.7.3), about ten times slower: python3's pip downloads the
# pure-Python packages, which are unpacked into DIR/site, and three small patches let
# them run on Jython (see the comments below). Jython's own pip cannot be used:
# Debian's Jython has no ssl module (so no index over https) and pip 20 fails
# installing wheels there.
set -eu
DIR=${1:?usage: sh bench/autobahn_setup.sh DIR}

is_cpython27() {
  "$1" -c 'import sys, platform; sys.exit(sys.version_info[:2] != (2, 7) or platform.python_implementation() != "CPython")' 2>/dev/null
}

PYTHON2=${PYTHON2:-}
if [ -z "$PYTHON2" ]; then
  for candidate in python2.7 python2 "$HOME"/.pyenv/versions/2.7*/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 && is_cpython27 "$candidate"; then
      PYTHON2=$(command -v "$candidate")
      break
    fi
  done
fi

if [ -n "$PYTHON2" ]; then
  is_cpython27 "$PYTHON2" || { echo "PYTHON2=$PYTHON2 is not a CPython 2.7" >&2; exit 2; }
  mkdir -p "$DIR"
  # virtualenv 20.15.1 is the last that runs on Python 2.7 (2.7 has no venv module).
  "$PYTHON2" -m pip install --quiet --disable-pip-version-check --target "$DIR/.virtualenv" \
    virtualenv==20.15.1
  PYTHONPATH="$DIR/.virtualenv" "$PYTHON2" -m virtualenv --quiet --no-download "$DIR"
  PIP="$DIR/bin/python -m pip install --quiet --disable-pip-version-check --no-deps"
  # The suite and every package it needs, at the last versions that support 2.7.
  $PIP autobahntestsuite==0.8.2 autobahn==0.10.9 txaio==2.1.0 six==1.16.0 \
    Twisted==20.3.0 zope.interface==5.5.2 incremental==21.3.0 constantly==15.1.0 \
    attrs==21.4.0 Automat==20.2.0 hyperlink==21.0.0 idna==2.10 PyHamcrest==1.10.1 \
    Jinja2==2.11.3 MarkupSafe==1.1.1 Werkzeug==1.0.1 klein==17.10.0 unittest2==1.1.0 \
    traceback2==1.4.0 linecache2==1.0.0 typing==3.10.0.0
  # Optional: wss:// (pyOpenSSL), and autobahn's C UTF-8 validator and masking (wsaccel,
  # ujson; built from source, so a C compiler and Python 2.7's headers are needed).
  $PIP pyOpenSSL==21.0.0 cryptography==3.3.2 cffi==1.15.1 pycparser==2.21 enum34==1.1.10 \
    ipaddress==1.0.23 service-identity==21.1.0 pyasn1==0.4.8 pyasn1-modules==0.2.8 \
    || echo "pyOpenSSL not installed: ws:// only" >&2
  $PIP wsaccel==0.6.3 ujson==2.0.3 || echo "wsaccel not installed: slower client" >&2
  if ! "$DIR/bin/python" -c "import OpenSSL" 2>/dev/null; then
    # The fuzzing client imports twisted.internet.ssl, which needs pyOpenSSL, only
    # for wss://: the same patch as for Jython below makes the import optional.
    "$DIR/bin/python" - "$DIR" <<'EOF2'
import glob, sys
path = glob.glob(sys.argv[1] + "/lib/python2.7/site-packages/autobahntestsuite/fuzzing.py")[0]
text = open(path, "rb").read()
newline = b"\r\n" if b"\r\n" in text else b"\n"
text = text.replace(b"from twisted.internet import reactor, ssl", newline.join([
    b"from twisted.internet import reactor", b"try:",
    b"   from twisted.internet import ssl", b"except ImportError:",
    b"   ssl = None"]), 1)
open(path, "wb").write(text)
EOF2
  fi
  (cd /tmp && "$DIR/bin/python" -c "import autobahntestsuite.wstest") \
    && echo "ready: python bench/autobahn.py --suite $DIR"
  exit 0
fi

# Jython.
mkdir -p "$DIR/dl" "$DIR/src" "$DIR/site"
cd "$DIR/dl"
# The suite and the versions of its dependencies that still support Python 2.7
# (zope.interface 5.5.2 has the pure-Python fallback Jython needs).
for spec in autobahntestsuite==0.8.2 autobahn==0.10.9 txaio==2.1.0 six==1.16.0 \
    Twisted==19.10.0 zope.interface==5.5.2 incremental==16.10.1 constantly==15.1.0 \
    attrs==19.3.0 Automat==0.8.0 hyperlink==19.0.0 idna==2.10 PyHamcrest==1.10.1 \
    Jinja2==2.11.3 MarkupSafe==1.1.1 Werkzeug==1.0.1 klein==17.10.0 unittest2==1.1.0 \
    traceback2==1.4.0 linecache2==1.0.0; do
  python3 -m pip download --quiet --no-deps "$spec" -d .
done
for archive in *.tar.gz *.tar.bz2; do tar xf "$archive" -C ../src; done
for wheel in *.whl; do (cd ../site && python3 -m zipfile -e "../dl/$wheel" .); done
for project in ../src/*/; do
  if [ -d "$project/src" ]; then
    cp -r "$project"/src/* ../site/
  else
    for entry in "$project"*; do
      name=$(basename "$entry")
      case "$name" in
        setup.py|docs|doc|tests|test|examples|benchmark|benchmarks|build|bin|tools) ;;
        *.egg-info|*.txt|*.rst|*.cfg|*.in|*.md|*.ini|PKG-INFO|LICENSE*) ;;
        *) if [ -d "$entry" ] || [ "${name%.py}" != "$name" ]; then cp -r "$entry" ../site/; fi ;;
      esac
    done
  fi
done
cd ../site
python3 - <<'EOF'
import re
from pathlib import Path

# 1. twisted.python (and two other packages) replace themselves in sys.modules by a
#    proxy that warns about deprecated attributes; Jython's importer then finds none
#    of their submodules ("No module named runtime"). Drop those warnings.
for name in ("twisted/python/__init__.py", "twisted/protocols/__init__.py",
             "twisted/test/__init__.py"):
    path = Path(name)
    path.write_text(re.sub(r"\ndeprecatedModuleAttribute\((.|\n)*?\)\n", "\n", path.read_text()))

# 2. Jython's SAX driver refuses the lexical-handler property with a Java exception
#    (twisted.web parses a template at import time); comments are all it would handle.
path = Path("twisted/web/template.py")
old = "    parser.setProperty(handler.property_lexical_handler, s)"
path.write_text(path.read_text().replace(
    old, "    try:\n    " + old + "\n    except:  # Jython's SAX driver\n        pass"))

# 3. pyOpenSSL (C) does not exist on Jython: the fuzzing client works without TLS
#    (ws:// only), so its import of twisted.internet.ssl is made optional.
path = Path("autobahntestsuite/fuzzing.py")
text = path.read_bytes().decode()
newline = "\r\n" if "\r\n" in text else "\n"
text = text.replace(
    "from twisted.internet import reactor, ssl",
    newline.join(["from twisted.internet import reactor", "try:",
                  "   from twisted.internet import ssl", "except ImportError:",
                  "   ssl = None"]), 1)
path.write_bytes(text.encode())
EOF
JYTHONPATH="$DIR/site" jython -c "import autobahntestsuite.wstest" \
  && echo "ready (Jython): python bench/autobahn.py --suite $DIR"
