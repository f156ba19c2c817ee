from robotrain.cli import main

raise SystemExit(main())
