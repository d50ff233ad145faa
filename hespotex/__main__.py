from hespotex.cli import main

raise SystemExit(main())
