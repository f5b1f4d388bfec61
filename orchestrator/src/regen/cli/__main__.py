from regen.cli.main import main

main()
