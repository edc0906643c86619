#!/bin/sh
# Set up the Autobahn WebSocket test suite (Python 2 only) to run under Jython, for
# bench/autobahn.py. Usage, from anywhere:
#
#     sh bench/autobahn_setup.sh DIR        # then:
#     JYTHONPATH=DIR/site python bench/autobahn.py
#
# Needs Debian's jython package (apt-get install -y jython; Jython 2.7.3) and python3
# with pip. Jython's own pip cannot be used: Debian's Jython has no ssl module (so no
# index over https) and pip 20 fails installing wheels there; so python3's pip
# downloads the pure-Python packages, which are unpacked into DIR/site. Three small
# patches let them run on Jython (see the comments below); the suite's code is not
# changed beyond making an import of pyOpenSSL optional.
set -eu
DIR=${1:?usage: sh bench/autobahn_setup.sh DIR}
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
JYTHONPATH="$DIR/site" jython -c "import autobahntestsuite.wstest" && echo "ready: JYTHONPATH=$DIR/site"
