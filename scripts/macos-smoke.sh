#!/bin/sh
# The first run on a Mac is the Mac proof kit, scripts/mac/kit.sh (see README,
# "Mac proof kit"); this name is kept because the crates' documentation points
# here. Arguments are the kit's (--quick, --out DIR, --duration S, --models "...").
exec sh "$(dirname "$0")/mac/kit.sh" "$@"
