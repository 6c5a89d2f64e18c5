from worker.devtools.bench.runner import main

raise SystemExit(main())
