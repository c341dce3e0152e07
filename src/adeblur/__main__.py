from adeblur.cli import main

raise SystemExit(main())
