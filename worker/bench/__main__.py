from worker.bench.runner import main

raise SystemExit(main())
