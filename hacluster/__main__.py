from hacluster.cli import main

raise SystemExit(main())
