from outagewatch.cli import main

raise SystemExit(main())
