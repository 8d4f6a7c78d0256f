// DDPTrain
