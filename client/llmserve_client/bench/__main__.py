from llmserve_client.bench.cli import main

main()
