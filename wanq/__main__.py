from wanq.cli import main

main()
