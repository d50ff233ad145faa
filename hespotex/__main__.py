from hespotex.cli.main import main

raise SystemExit(main())
