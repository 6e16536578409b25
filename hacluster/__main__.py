from hacluster.tools.cli import main

raise SystemExit(main())
