from dreamer.cli.main import main

main()
