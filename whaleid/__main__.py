from whaleid.cli import main

main()
